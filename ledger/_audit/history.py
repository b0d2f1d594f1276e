"""A user's history by period and as of an instant, read from the event store.

Both start from the newest usable snapshot before the period or the instant: a
user's event times never go backwards (``UserContexts._trigger``), so snapshot
times grow with their versions and bisection over the versions finds it in a few
reads.
"""

from collections.abc import Callable, Iterator
from datetime import datetime
from itertools import takewhile
from typing import TypeVar, cast
from uuid import UUID

from ledger._domain.contexts import UserContexts, UserSnapshot, user_aggregate_id
from ledger._domain.events import ContextEvent
from ledger._store.application import FIRST_PAGE, SNAPSHOT_INTERVAL, LedgerApplication
from ledger._store.records import EventRecord
from ledger._store.serialization import PydanticMapper
from ledger._store.snapshot_rule import trusted_snapshot

E = TypeVar("E", ContextEvent, EventRecord)


class History:
    """The auditor's reads of one application's users."""

    def __init__(self, app: LedgerApplication) -> None:
        self.app = app

    def state_as_of(self, user_id: str, as_of: datetime) -> UserContexts | None:
        """The user's aggregate after every event at or before ``as_of``."""
        snapshot = self.snapshot_before(user_id, lambda at: at <= as_of)
        start = None if snapshot is None else UserContexts.from_snapshot(snapshot)
        after = 0 if snapshot is None else snapshot.originator_version
        first = FIRST_PAGE if snapshot is None else SNAPSHOT_INTERVAL + 10
        events = self.app.events_after(user_id, after, first)
        in_time = takewhile(lambda event: event.timestamp <= as_of, events)
        return self.app.replay(user_id, start, in_time)

    def events_between(
        self, user_id: str, since: datetime | None, until: datetime | None
    ) -> Iterator[ContextEvent]:
        """The user's events with ``since <= occurred_at < until``, in order."""
        return self._between(self.app.events_after, user_id, since, until)

    def records_between(
        self, user_id: str, since: datetime | None, until: datetime | None
    ) -> Iterator[EventRecord]:
        """``events_between`` read into records: for the auditor's history, which
        needs each event's JSON form, not its domain model."""
        return self._between(self.app.records_after, user_id, since, until)

    def _between(
        self,
        read: Callable[[str, int, int], Iterator[E]],
        user_id: str,
        since: datetime | None,
        until: datetime | None,
    ) -> Iterator[E]:
        after = 0
        if since is not None:
            snapshot = self.snapshot_before(user_id, lambda at: at < since)
            after = 0 if snapshot is None else snapshot.originator_version
        for event in read(user_id, after, FIRST_PAGE):
            if until is not None and event.timestamp >= until:
                return
            if since is None or event.timestamp >= since:
                yield event

    def of_context(self, user_id: str, context_id: str) -> Iterator[EventRecord]:
        """Every event of one of the user's contexts, in order."""
        for event in self.app.records_after(user_id, 0):
            if event.context_id == context_id:
                yield event

    def snapshot_before(
        self, user_id: str, is_early: Callable[[datetime], bool]
    ) -> UserSnapshot | None:
        """The newest trusted snapshot whose time ``is_early`` accepts.

        Trusted by the one rule loading uses (``ledger._store.snapshot_rule``);
        any other snapshot is passed over, and the events are replayed instead.
        """
        aggregate_id = user_aggregate_id(user_id)
        newest = self._trusted(aggregate_id, None)
        if newest is None:
            return None
        if is_early(newest.timestamp):
            return newest
        best = None
        low, high = 1, newest.originator_version - 1
        while low <= high:
            middle = (low + high) // 2
            snapshot = self._trusted(aggregate_id, middle)
            if snapshot is None:
                low = middle + 1
            elif is_early(snapshot.timestamp):
                best, low = snapshot, middle + 1
            else:
                high = snapshot.originator_version - 1
        return best

    def _trusted(self, aggregate_id: UUID, lte: int | None) -> UserSnapshot | None:
        mapper = cast(PydanticMapper, self.app.mapper)
        return trusted_snapshot(self.app.snapshots, mapper, aggregate_id, lte)
