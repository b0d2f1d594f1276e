"""Runs commands on a user's aggregate: once each, in turn within a process, and
retried on conflicts with other processes.

- Commands of one user take turns in a process (striped locks), so optimistic
  conflicts happen only between processes.
- A command first decides on the process's cached aggregate and saves: one
  round trip. A conflict (another process wrote the user since) is retried at
  once on state caught up from the store, then with jittered exponential
  backoff, for at most CONFLICT_SECONDS, then ConcurrencyConflict. A user whose
  cached state is often stale (other processes write it too) has its commands
  catch up from the store before they decide: a read instead of a lost write.
- Every call stamps its events with a fresh command id, and with the caller's
  request id if given. A request id the user's aggregate remembers (its last
  REQUEST_WINDOW) is not applied again: ``repeat`` gives the first call's result,
  from what this ledger kept of it when it recorded it, else rebuilt from the
  events the call stored.
- A write whose outcome is unknown (a lost reply) is settled by the store in
  ``LedgerApplication.record``, so a retry never applies a call twice.
"""

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar
from uuid import uuid4

from eventsourcing.persistence import IntegrityError

from ledger import _metrics as metrics
from ledger import _tracing as tracing
from ledger._domain.contexts import UserContexts, user_aggregate_id
from ledger._domain.events import CarriesMetadata, ContextEvent
from ledger._domain.models import Context
from ledger._store.application import LedgerApplication
from ledger._store.cache import RecordedCall
from ledger._store.caller_transaction import Port, TransactionAborted, port_of
from ledger._store.postgres_log import LockWaitEnded
from ledger.errors import ConcurrencyConflict, LedgerCorrupted, LedgerError

T = TypeVar("T")
CONFLICT_SECONDS = 10.0
MAX_ATTEMPTS = 1000
"""Attempts after which a conflict is given up even if CONFLICT_SECONDS has not
passed (a clock frozen by a test never lets it pass)."""
FIRST_BACKOFF_SECONDS = 0.002
MAX_BACKOFF_SECONDS = 0.2
LOCK_STRIPES = 256
STALE_WEIGHT = 0.125
"""The weight of a user's latest call in the estimate of how often the user's
cached state is stale (other processes wrote the user since this one last did)."""
READ_FIRST_ABOVE = 0.3
"""Above this estimate, the user's commands catch up from the store before they
decide. Measured on PostgreSQL: a read costs a writer about 0.13 ms of CPU, a
lost write 0.30 ms (and the catch-up after it is needed either way), so reading
first costs less once more than about 0.13 / 0.43 of the cached states are stale."""


@dataclass(frozen=True)
class FirstCall:
    """What a repeated request id finds: the first call's events, and each
    context they left, by id, as it stood right after them."""

    events: list[ContextEvent]
    context_after: Callable[[str], Context]


def _decided_on(
    known: UserContexts,
    command: Callable[[UserContexts], T],
    command_id: str,
    request_id: str | None,
) -> tuple[T] | None:
    """The command decided on a state that may be stale (a cache, a speculation),
    as the first try of both paths: its result when it appends (the append then
    conflicts if the state was stale); None when the answer appends nothing (a
    refusal, a repeat, a count of 0), which is never given from such a state but
    decided again on what is stored."""
    if request_id is not None and request_id in known.requests:
        return None
    known.attribute_to(command_id, request_id)
    try:
        result = command(known)
    except LedgerError:
        return None
    return (result,) if known.pending else None


class _Retries:
    """The attempts of one call against conflicts, and the pause after each."""

    def __init__(self) -> None:
        self.deadline = time.monotonic() + CONFLICT_SECONDS
        self.backoff = FIRST_BACKOFF_SECONDS
        self.attempts = 0

    def lost(self, user_id: str) -> None:
        """After a conflict: pauses before the next attempt, or gives up.

        The first loss is retried at once: the retry's reload is the catching
        up. Jitter spreads only those that lose again."""
        pause = 0.0 if self.attempts == 1 else random.uniform(0, self.backoff)  # noqa: S311
        if time.monotonic() + pause > self.deadline or self.attempts >= MAX_ATTEMPTS:
            raise ConcurrencyConflict(user_id, self.attempts) from None
        if pause:
            time.sleep(pause)
            self.backoff = min(self.backoff * 2, MAX_BACKOFF_SECONDS)


class CommandRunner:
    """Applies commands to users' aggregates through one application."""

    def __init__(self, app: LedgerApplication, now: Callable[[], datetime]) -> None:
        self._app = app
        self._now = now
        self._locks = [threading.Lock() for _ in range(LOCK_STRIPES)]
        self._stale = [0.0] * LOCK_STRIPES  # each changed under its stripe's lock

    def run(
        self,
        user_id: str,
        command: Callable[[UserContexts], T],
        *,
        request_id: str | None = None,
        repeat: Callable[[FirstCall], T] | None = None,
        connection: object | None = None,
    ) -> T:
        """The command's result, its events stored; or the first call's result when
        ``request_id`` was applied before. With ``connection`` (the caller's open
        psycopg connection), the events are appended in the caller's transaction,
        uncommitted (``ledger._store.caller_transaction``)."""
        if connection is not None:
            port = port_of(connection)
            self._app.caller_transactions.check(port)
            return self._run_in(
                port, user_id, command, request_id=request_id, repeat=repeat
            )
        command_id = uuid4().hex
        retries = _Retries()  # waiting for the turn counts
        stripe = hash(user_id) % LOCK_STRIPES
        with self._locks[stripe]:
            while True:
                retries.attempts += 1
                try:
                    return self._attempt(
                        user_id,
                        command,
                        command_id=command_id,
                        request_id=request_id,
                        repeat=repeat,
                        stripe=stripe,
                        first=retries.attempts == 1,
                    )
                except LockWaitEnded as waited:
                    # Another transaction held what the append needs for longer
                    # than it waits (an application's open transaction that wrote
                    # the user with connection=, a move's fence, DDL): the user's
                    # turn is not held longer, so the others of its stripe go on.
                    conflict = ConcurrencyConflict(user_id, retries.attempts)
                    conflict.add_note(
                        "the append waited for another transaction that holds the "
                        "user's next version or the log's table (an application's "
                        "open transaction with connection=, a move, DDL); nothing "
                        "was stored; retry after it ends"
                    )
                    raise conflict from waited
                except IntegrityError:
                    metrics.count_retry()
                    tracing.count_retry()
                    if retries.attempts == 1:
                        self._observe(stripe, stale=True)
                    retries.lost(user_id)

    def _run_in(
        self,
        port: Port,
        user_id: str,
        command: Callable[[UserContexts], T],
        *,
        request_id: str | None,
        repeat: Callable[[FirstCall], T] | None,
    ) -> T:
        """``run`` in the caller's transaction. No turn is taken in the process:
        the append may wait for another transaction that wrote the user (the
        unique key of its version), and a turn held while waiting would stop the
        caller's own next command; the database orders them instead."""
        command_id = uuid4().hex
        retries = _Retries()
        tracing.in_caller_transaction()
        while True:
            retries.attempts += 1
            try:
                if retries.attempts == 1:
                    decided = self._decide_in(
                        port, user_id, command, command_id, request_id
                    )
                    if decided is not None:
                        return decided[0]
                aggregate = self._app.load_in(port, user_id, self._now())
                if request_id is not None and request_id in aggregate.requests:
                    if repeat is None:
                        msg = "a command with a request id needs a repeat"
                        raise TypeError(msg)
                    return repeat(
                        self._first_call_in(port, user_id, aggregate, request_id)
                    )
                aggregate.attribute_to(command_id, request_id)
                result = command(aggregate)
                self._app.record_in(port, aggregate)
            except TransactionAborted as aborted:
                conflict = ConcurrencyConflict(user_id, retries.attempts)
                conflict.add_note(
                    f"the database aborted your transaction ({aborted}): roll it "
                    "back and run it again, whole"
                )
                raise conflict from aborted
            except IntegrityError:
                metrics.count_retry()
                tracing.count_retry()
                retries.lost(user_id)
            else:
                return result

    def _decide_in(
        self,
        port: Port,
        user_id: str,
        command: Callable[[UserContexts], T],
        command_id: str,
        request_id: str | None,
    ) -> tuple[T] | None:
        """The first try in a caller's transaction, in one round trip to it: on
        the state the user's last append in a caller's transaction left, if it
        commits (the append then requires that event, stored as it was); else on
        the user's committed state (the process's cache; read from the store
        first when the user has events in callers' transactions whose outcome
        this process cannot know), as if the caller's transaction held none of
        the user's events. If it does, the append conflicts with them at once
        (their versions are taken) and the retry reads them. None when the
        answer appends nothing: that is decided on what the caller's transaction
        sees, as a refusal, a repeat or a count of 0 never comes from a cache."""
        now = self._now()
        aggregate_id = user_aggregate_id(user_id)
        speculated = self._app.cache.speculation(aggregate_id)
        after: tuple[int, bytes] | None = None
        if speculated is not None:
            known, after = speculated[0].copy(), speculated[1]
        elif self._app.cache.unsettled(aggregate_id):
            known = self._app.load(user_id, now, snapshot_cold=True)
        else:
            known = self._app.load_cached(user_id, now)
        decided = _decided_on(known, command, command_id, request_id)
        if decided is None:
            return None
        try:
            self._app.record_in(port, known, after)
        except IntegrityError:
            self._app.cache.forget_speculation(aggregate_id)
            raise
        return decided

    def _first_call_in(
        self, port: Port, user_id: str, aggregate: UserContexts, request_id: str
    ) -> FirstCall:
        """``_first_call`` as the caller's transaction sees the user (the first
        call may be in it, uncommitted)."""
        first, last = aggregate.requests[request_id]
        read = self._app.events_in(port, user_id, 1, aggregate.version)
        events = [
            event
            for event in read
            if first <= event.originator_version <= last
            and event.request_id == request_id
        ]
        if last == aggregate.version:
            return FirstCall(events, aggregate.contexts.__getitem__)
        state = self._app.replay(
            user_id, None, [e for e in read if e.originator_version <= last]
        )
        if state is None:
            raise LedgerCorrupted(user_id, f"no events up to version {last}")
        return FirstCall(events, state.contexts.__getitem__)

    def _attempt(
        self,
        user_id: str,
        command: Callable[[UserContexts], T],
        *,
        command_id: str,
        request_id: str | None,
        repeat: Callable[[FirstCall], T] | None,
        stripe: int,
        first: bool,
    ) -> T:
        unsettled = self._app.cache.any_unsettled() and self._app.cache.unsettled(
            user_aggregate_id(user_id)
        )
        if first and self._stale[stripe] <= READ_FIRST_ABOVE and not unsettled:
            # Decided on this process's cached aggregate without reading the store:
            # if another process wrote since, the save conflicts and the retry
            # reloads.
            known = self._app.load_cached(user_id, self._now())
            decided = _decided_on(known, command, command_id, request_id)
            if decided is not None:
                self._record(known, request_id)
                self._observe(stripe, stale=False)
                return decided[0]
        aggregate = self._catch_up(user_id, stripe if first else None)
        if unsettled:
            self._app.cache.settle(aggregate.id)
        if request_id is not None and request_id in aggregate.requests:
            if repeat is None:
                msg = "a command with a request id needs a repeat"
                raise TypeError(msg)
            return repeat(self._first_call(user_id, aggregate, request_id))
        aggregate.attribute_to(command_id, request_id)
        result = command(aggregate)
        self._record(aggregate, request_id)
        return result

    def _catch_up(self, user_id: str, stripe: int | None) -> UserContexts:
        """The user's aggregate as stored now; on a call's first try, whether
        that found other processes' events counts in the user's estimate."""
        seen = self._app.cache.get(user_aggregate_id(user_id))
        aggregate = self._app.load(user_id, self._now())
        if stripe is not None and seen is not None:
            self._observe(stripe, stale=aggregate.version > seen.version)
        return aggregate

    def _observe(self, stripe: int, *, stale: bool) -> None:
        self._stale[stripe] += STALE_WEIGHT * (float(stale) - self._stale[stripe])

    def _record(self, aggregate: UserContexts, request_id: str | None) -> None:
        """Stores the aggregate's new events; keeps the outcome of a call with a
        request id, for its repeats (``_first_call``)."""
        events = aggregate.pending
        self._app.record(aggregate)
        if request_id is None or not events:
            return
        versions = aggregate.requests.get(request_id)
        if versions is None:
            return
        # Recorded, the aggregate is never changed again (others copy it), and its
        # contexts are frozen: the call keeps references, not copies.
        left = {
            event.context_id: aggregate.contexts[event.context_id]
            for event in events
            if event.context_id in aggregate.contexts
        }
        # A repeat reads the events' kinds and ids, never their metadata: the
        # kept copies leave it out (the contexts kept hold what the call left).
        kept = tuple(
            event.model_copy(update={"metadata": None})
            if isinstance(event, CarriesMetadata)
            else event
            for event in events
        )
        call = RecordedCall(versions, aggregate.key_generation, kept, left)
        self._app.cache.remember_call(aggregate.id, request_id, call)

    def _first_call(
        self, user_id: str, aggregate: UserContexts, request_id: str
    ) -> FirstCall:
        """The first call of ``request_id``, found in ``aggregate``'s window.

        ``aggregate`` was just read from the store, so the window's entry proves
        that the call is stored. What this ledger kept when it recorded the call
        answers if it is that call (the same versions: not one applied again
        after its id left the window) and no erasure came since (the same key
        generation: the kept contexts may hold metadata an erasure destroyed).
        The kept contexts are those the aggregate held right after the call,
        which is what a replay up to its last version rebuilds. Else the events
        are read from the store, and the state after them too if later events
        followed.
        """
        first, last = aggregate.requests[request_id]
        kept = self._app.cache.recorded_call(aggregate.id, request_id)
        if (
            kept is not None
            and kept.versions == (first, last)
            and kept.key_generation == aggregate.key_generation
        ):
            return FirstCall(list(kept.events), kept.contexts.__getitem__)
        events = [
            event
            for event in self._app.events_between_versions(user_id, first, last)
            if event.request_id == request_id
        ]
        if last == aggregate.version:
            return FirstCall(events, aggregate.contexts.__getitem__)
        return FirstCall(
            events, lambda context: self._app.state_at(user_id, last).contexts[context]
        )
