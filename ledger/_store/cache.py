"""The latest known state of recently used users, shared by a ledger's threads,
and the calls with a request id that this ledger recorded last.

The library's repository cache fast-forwards the shared cached aggregate in place
and copies it for the caller after releasing its lock, so a concurrent reader can
copy a half-updated aggregate. Entries here are never changed in place: readers
copy an entry before changing it, and a newer state replaces the entry whole.
"""

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from uuid import UUID

from ledger._domain.contexts import UserContexts
from ledger._domain.events import ContextEvent
from ledger._domain.models import Context

RECORDED_CALLS = 4096
"""How many calls with a request id a ledger keeps the outcome of (all users)."""


@dataclass(frozen=True)
class RecordedCall:
    """A call with a request id as this ledger stored it: where its events lie in
    the user's stream (the request window's entry), the data key generation they
    were sealed under, the events (without their metadata: a repeat reads only
    their kinds and ids), and the contexts they left, as the aggregate held them
    (frozen; nothing changes them in place, and the cached aggregates share
    them)."""

    versions: tuple[int, int]
    key_generation: int
    events: tuple[ContextEvent, ...]
    contexts: Mapping[str, Context]


Speculation = tuple[UserContexts, tuple[int, bytes]]
"""A user's state if its last append in a caller's transaction commits, and that
append's last event (version, stored state)."""


class AggregateCache:
    """Least recently used users' aggregates, by aggregate id, and the outcomes of
    the last RECORDED_CALLS calls with a request id, by aggregate id and request."""

    def __init__(self, maxsize: int, calls: int = RECORDED_CALLS) -> None:
        self._maxsize = maxsize
        self._entries: OrderedDict[UUID, UserContexts] = OrderedDict()
        self._calls_size = calls
        self._calls: OrderedDict[tuple[UUID, str], RecordedCall] = OrderedDict()
        self._unsettled: OrderedDict[UUID, None] = OrderedDict()
        self._speculations: OrderedDict[
            UUID, tuple[UserContexts, tuple[int, bytes]]
        ] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, aggregate_id: UUID) -> UserContexts | None:
        """The cached aggregate; callers must not change it (copy it first)."""
        with self._lock:
            entry = self._entries.get(aggregate_id)
            if entry is not None:
                self._entries.move_to_end(aggregate_id)
            return entry

    def offer(self, aggregate: UserContexts) -> None:
        """Keeps ``aggregate`` if it is newer than the entry; the caller gives it up."""
        with self._lock:
            current = self._entries.get(aggregate.id)
            if current is not None and current.version >= aggregate.version:
                return
            self._entries[aggregate.id] = aggregate
            self._entries.move_to_end(aggregate.id)
            if len(self._entries) > self._maxsize:
                self._entries.popitem(last=False)

    def remember_call(
        self, aggregate_id: UUID, request_id: str, call: RecordedCall
    ) -> None:
        """Keeps the outcome of a call whose events are stored."""
        with self._lock:
            self._calls[aggregate_id, request_id] = call
            self._calls.move_to_end((aggregate_id, request_id))
            if len(self._calls) > self._calls_size:
                self._calls.popitem(last=False)

    def recorded_call(self, aggregate_id: UUID, request_id: str) -> RecordedCall | None:
        """The outcome of the user's call with ``request_id``, if this ledger
        stored it and still keeps it."""
        with self._lock:
            return self._calls.get((aggregate_id, request_id))

    def unsettle(self, aggregate_id: UUID) -> None:
        """The user has events in a caller's transaction whose outcome this
        process cannot know: its next command reads the store first."""
        with self._lock:
            self._unsettled[aggregate_id] = None
            self._unsettled.move_to_end(aggregate_id)
            if len(self._unsettled) > self._maxsize:
                self._unsettled.popitem(last=False)

    def speculate(self, aggregate: UserContexts, after: tuple[int, bytes]) -> None:
        """The user's state if its last append in a caller's transaction
        commits: ``after`` is that append's last event (version, stored state),
        which a command decided on this state requires of the store."""
        with self._lock:
            self._speculations[aggregate.id] = (aggregate, after)
            self._speculations.move_to_end(aggregate.id)
            if len(self._speculations) > self._maxsize:
                self._speculations.popitem(last=False)

    def speculation(self, aggregate_id: UUID) -> Speculation | None:
        """The user's speculated state and what it requires; callers copy it."""
        with self._lock:
            return self._speculations.get(aggregate_id)

    def forget_speculation(self, aggregate_id: UUID) -> None:
        with self._lock:
            self._speculations.pop(aggregate_id, None)

    def any_unsettled(self) -> bool:
        """Whether any user is unsettled (a read without the lock: a hint that
        spares the ledger's own commands the lookup when none is)."""
        return bool(self._unsettled)

    def unsettled(self, aggregate_id: UUID) -> bool:
        with self._lock:
            return aggregate_id in self._unsettled

    def settle(self, aggregate_id: UUID) -> None:
        """The user's state was read from the store by a command of its own."""
        with self._lock:
            self._unsettled.pop(aggregate_id, None)

    def drop(self, aggregate_id: UUID) -> None:
        """Forgets the user's entry and calls (after an erasure: they hold
        personal data)."""
        with self._lock:
            self._entries.pop(aggregate_id, None)
            self._speculations.pop(aggregate_id, None)
            for key in [key for key in self._calls if key[0] == aggregate_id]:
                del self._calls[key]
