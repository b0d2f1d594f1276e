"""The per-user aggregate: a user's active contexts, changed only by events."""

from collections import OrderedDict
from collections.abc import Iterable
from datetime import datetime
from secrets import token_hex
from typing import Any, Self
from uuid import UUID, uuid4

from ledger._domain.events import (
    CarriesMetadata,
    ContextCleared,
    ContextCreated,
    ContextEvent,
    ContextExpired,
    ContextReused,
    ContextUpdated,
    UserForgotten,
)
from ledger._domain.hashing import (
    GENESIS_HASH,
    SALT_BYTES,
    metadata_commitment,
    record_hash,
)
from ledger._domain.models import EVICTED, Context, OnLimit
from ledger._domain.snapshot import UserSnapshot
from ledger._domain.streams import check_follows, check_thread, user_aggregate_id
from ledger._domain.transitions import (
    ContextFields,
    ends_context,
    evicts_context,
    evolve_context,
    evolve_fields,
    forgets_user,
    least_recently_used,
    merge_metadata,
    opens_context,
)
from ledger._domain.validation import check_merged_size
from ledger.errors import ContextLimitExceeded, ContextNotFound

__all__ = [  # the names of transitions, snapshot and streams imported from here
    "REQUEST_WINDOW",
    "ContextFields",
    "UserContexts",
    "UserSnapshot",
    "ends_context",
    "evicts_context",
    "evolve_context",
    "evolve_fields",
    "forgets_user",
    "opens_context",
    "project_user",
    "remember_request",
    "user_aggregate_id",
]


REQUEST_WINDOW = 1000
"""How many of a user's latest request ids are remembered (a repeat is not applied)."""


class UserContexts:
    """One user's active contexts. Ended contexts leave the state, so it stays small."""

    def __init__(self, aggregate_id: UUID, user_id: str, created_on: datetime) -> None:
        self._id = aggregate_id
        self.version = 0
        self.user_id = user_id
        self.created_on = created_on
        self.modified_on = created_on
        self.last_hash = GENESIS_HASH
        self.contexts: dict[str, Context] = {}
        self._threads: dict[str, str] = {}
        self._pending: list[ContextEvent] = []
        self.requests: OrderedDict[str, tuple[int, int]] = OrderedDict()
        """The last REQUEST_WINDOW request ids: the first and last versions of the
        events of each."""
        self._call: dict[str, Any] = {}
        self.key_generation = 0
        """The data key new events seal their metadata with: one more after each
        ``forgotten`` event, so nothing new is ever sealed under a destroyed key."""
        self.forgotten_at = 0

    @classmethod
    def start(cls, user_id: str, now: datetime) -> Self:
        """The empty aggregate of a user who has no events yet."""
        return cls(user_aggregate_id(user_id), user_id, now)

    @classmethod
    def from_snapshot(cls, snapshot: UserSnapshot) -> Self:
        aggregate = cls(snapshot.originator_id, snapshot.user_id, snapshot.created_on)
        aggregate.version = snapshot.originator_version
        aggregate.modified_on = snapshot.modified_on
        aggregate.last_hash = snapshot.last_hash
        aggregate.key_generation = snapshot.key_generation
        aggregate.forgotten_at = snapshot.forgotten_at
        for context in snapshot.contexts:
            aggregate._put(context)
        for request_id, first, last in snapshot.requests:
            aggregate.requests[request_id] = (first, last)
        return aggregate

    @property
    def id(self) -> UUID:
        return self._id

    def copy(self) -> Self:
        """An independent aggregate: contexts are frozen and replaced, never changed
        in place, so copying the maps is enough."""
        copy = type(self).__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy.contexts = dict(self.contexts)
        copy._threads = dict(self._threads)
        copy._pending = list(self._pending)
        copy.requests = OrderedDict(self.requests)
        return copy

    def attribute_to(self, command_id: str, request_id: str | None) -> None:
        """Stamps the events triggered from now on with the call's ids."""
        self._call = {"command_id": command_id, "request_id": request_id}

    @property
    def pending(self) -> list[ContextEvent]:
        """Events triggered since the aggregate was loaded, not yet saved."""
        return list(self._pending)

    def collect_events(self) -> list[ContextEvent]:
        """Hands the new events over for storing and forgets them."""
        events, self._pending = self._pending, []
        self._call = {}  # the next call stamps its own ids
        return events

    # Queries.

    def for_thread(self, thread_id: str) -> Context | None:
        context_id = self._threads.get(thread_id)
        return None if context_id is None else self.contexts[context_id]

    def owned(self, context_id: str) -> Context:
        """The user's active context with this id; any other id is simply not found."""
        try:
            return self.contexts[context_id]
        except KeyError:
            raise ContextNotFound(self.user_id, context_id) from None

    def live(self, now: datetime) -> list[Context]:
        return [c for c in self.contexts.values() if not c.is_due(now)]

    def time_of(self, now: datetime) -> datetime:
        """The time a command given the clock's ``now`` decides with and stamps its
        events with: never before the user's last event, so a host whose clock is
        behind neither writes times that go backwards nor revives a context whose
        time to live ran out by the stream's time. Queries decide with it too."""
        return max(now, self.modified_on) if self.version else now

    # Commands: each decides, then triggers events that change the state.

    def open(
        self,
        thread_id: str,
        *,
        run_id: str | None,
        metadata: dict[str, Any],
        ttl_seconds: float | None,
        default_ttl_seconds: float | None,
        now: datetime,
        limit: int,
        on_limit: OnLimit = "refuse",
    ) -> Context:
        """Reuses the thread's live context, else creates one (within ``limit``).

        At the limit, ``on_limit="refuse"`` raises ContextLimitExceeded and
        ``"evict"`` first clears the least recently used live contexts (reason
        EVICTED), as many as it takes to make room. Contexts past their time to
        live are recorded expired either way, and never evicted."""
        now = self.time_of(now)
        current = self.for_thread(thread_id)
        if current is not None and not current.is_due(now):
            return self._reuse(current, run_id, metadata, ttl_seconds, now)
        live = self.live(now)
        excess = len(live) - limit + 1  # how many must go to make room
        if excess > 0 and on_limit != "evict":
            raise ContextLimitExceeded(self.user_id, limit)
        self.expire_due(now)
        for evicted in least_recently_used(live)[: max(excess, 0)]:
            self._end(ContextCleared, evicted, now, reason=EVICTED)
        context_id = str(uuid4())
        self._trigger(
            ContextCreated,
            now,
            context_id=context_id,
            thread_id=thread_id,
            run_id=run_id,
            metadata=merge_metadata({}, metadata),
            ttl_seconds=ttl_seconds if ttl_seconds is not None else default_ttl_seconds,
        )
        return self.contexts[context_id]

    def _reuse(
        self,
        context: Context,
        run_id: str | None,
        metadata: dict[str, Any],
        ttl_seconds: float | None,
        now: datetime,
    ) -> Context:
        check_merged_size(merge_metadata(context.metadata, metadata), metadata)
        self._trigger(
            ContextReused,
            now,
            context_id=context.context_id,
            thread_id=context.thread_id,
            run_id=run_id if run_id is not None else context.run_id,
            metadata=metadata,
            ttl_seconds=ttl_seconds if ttl_seconds is not None else context.ttl_seconds,
            reuse_count=context.reuse_count + 1,
        )
        return self.contexts[context.context_id]

    def update(
        self,
        context_id: str,
        *,
        run_id: str | None,
        metadata: dict[str, Any],
        now: datetime,
    ) -> Context:
        now = self.time_of(now)
        context = self.owned(context_id)
        if context.is_due(now):
            raise ContextNotFound(self.user_id, context_id)
        check_merged_size(merge_metadata(context.metadata, metadata), metadata)
        self._trigger(
            ContextUpdated,
            now,
            context_id=context_id,
            thread_id=context.thread_id,
            run_id=run_id if run_id is not None else context.run_id,
            metadata=metadata,
        )
        return self.contexts[context_id]

    def clear(self, context_id: str, *, reason: str, now: datetime) -> None:
        now = self.time_of(now)
        context = self.owned(context_id)
        if context.is_due(now):
            self._expire(context, now)
        else:
            self._end(ContextCleared, context, now, reason=reason)

    def clear_all(self, *, reason: str, now: datetime) -> int:
        """Clears every live context (due ones expire instead); returns how many."""
        now = self.time_of(now)
        self.expire_due(now)
        cleared = list(self.contexts.values())
        for context in cleared:
            self._end(ContextCleared, context, now, reason=reason)
        return len(cleared)

    def expire_due(self, now: datetime) -> int:
        now = self.time_of(now)
        due = [c for c in self.contexts.values() if c.is_due(now)]
        for context in due:
            self._expire(context, now)
        return len(due)

    def forget(
        self, *, reason: str, now: datetime, inactive_since: datetime | None = None
    ) -> bool:
        """Erases the user's personal data: ends every context and retires the data
        key (the store destroys it). Nothing to do, and False, for a user with no
        event since the last erasure, and with ``inactive_since``, for a user
        whose last event is not before it (active again since it was listed)."""
        now = self.time_of(now)
        if self.version == self.forgotten_at:
            return False
        if inactive_since is not None and self.modified_on >= inactive_since:
            return False
        self._trigger(
            UserForgotten,
            now,
            context_id="",
            thread_id="",
            run_id=None,
            reason=reason,
        )
        return True

    def _expire(self, context: Context, now: datetime) -> None:
        self._end(
            ContextExpired, context, now, reason="ttl", expires_at=context.expires_at
        )

    def _end(
        self, cls: type[ContextEvent], context: Context, now: datetime, **fields: Any
    ) -> None:
        self._trigger(
            cls,
            now,
            context_id=context.context_id,
            thread_id=context.thread_id,
            run_id=context.run_id,
            **fields,
        )

    def _trigger(self, cls: type[ContextEvent], now: datetime, **fields: Any) -> None:
        # Every value here is validated already (by the API or from the state), so
        # the event is built without validating it again.
        if issubclass(cls, CarriesMetadata):
            salt = token_hex(SALT_BYTES)
            fields["metadata_salt"] = salt
            fields["metadata_commitment"] = metadata_commitment(
                salt, fields["metadata"]
            )
        event = cls.model_construct(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=now,  # every command takes it from time_of
            user_id=self.user_id,
            prev_hash=self.last_hash,
            key_generation=self.key_generation,
            **self._call,
            **fields,
        )
        self.apply(event)
        self._pending.append(event)

    # Evolution: the only code that changes the state.

    def apply(self, event: ContextEvent) -> None:
        check_follows(event, self.user_id, self.version, self.key_generation)
        if isinstance(event, UserForgotten):
            self.contexts.clear()
            self._threads.clear()
            self.key_generation = event.key_generation + 1
            self.forgotten_at = event.originator_version
        else:
            self._evolve(event)
        if event.request_id is not None:
            self._remember(event.request_id, event.originator_version)
        self.version = event.originator_version
        self.modified_on = event.timestamp
        self.last_hash = record_hash(event.chain_record())

    def _remember(self, request_id: str, version: int) -> None:
        remember_request(self.requests, request_id, version)

    def _evolve(self, event: ContextEvent) -> None:
        current = self.contexts.get(event.context_id)
        check_thread(current, event)
        context = evolve_context(current, event)
        if context is None:
            if self._threads.get(event.thread_id) == event.context_id:
                del self._threads[event.thread_id]
            del self.contexts[event.context_id]
        else:
            self._put(context)

    def _put(self, context: Context) -> None:
        self.contexts[context.context_id] = context
        self._threads[context.thread_id] = context.context_id


def remember_request(
    requests: "OrderedDict[str, tuple[int, int]]", request_id: str, version: int
) -> None:
    """Notes that the event at ``version`` was written for ``request_id``: the
    request window of the last REQUEST_WINDOW request ids, with the first and last
    versions of each (the aggregate's, and the fold verification checks a
    snapshot against)."""
    known = requests.get(request_id)
    first = known[0] if known is not None and known[1] == version - 1 else version
    requests[request_id] = (first, version)
    requests.move_to_end(request_id)
    if len(requests) > REQUEST_WINDOW:
        requests.popitem(last=False)


def project_user(
    aggregate: UserContexts | None, events: Iterable[ContextEvent | UserSnapshot]
) -> UserContexts | None:
    """Replays stored events (after an optional snapshot) into the aggregate."""
    for event in events:
        if isinstance(event, UserSnapshot):
            aggregate = UserContexts.from_snapshot(event)
            continue
        if aggregate is None:
            aggregate = UserContexts(
                event.originator_id, event.user_id, event.timestamp
            )
        aggregate.apply(event)
    return aggregate
