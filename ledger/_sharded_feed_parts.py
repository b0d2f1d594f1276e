"""The per-shard feeds of one sharded change feed, and what it took from each.

Each shard has a slot: where the feed starts there (a position, or its head once
reached), the shard's ``ChangeFeed`` once made, and the events taken from it but
not yet judged. An event is judged by the one rule of ``shard_copies``
(``taken_elsewhere``) with the feed's own positions; when the moves around it are
not read yet, the shard's link is asked and the shard waits while the others go
on. Every method runs under the owning feed's lock and does no I/O, except where
its docstring says it may block.
"""

import threading
import time
from collections.abc import Callable, Mapping
from uuid import UUID

from ledger._domain.contexts import user_aggregate_id
from ledger._domain.models import LedgerEvent
from ledger._feed_positions import position_text
from ledger._sharded_feed_links import RETRY_SECONDS, UNKNOWN, ShardLink
from ledger._sharded_feed_reads import MovedReads
from ledger._sharded_feed_slots import Failures, ShardedChange, Slot
from ledger._sharded_feed_source import FeedSource
from ledger._store.feed import ChangeFeed
from ledger._store.feed_hub import FeedHub
from ledger._store.shard_copies import CopyPosition, MovesAround, taken_elsewhere
from ledger.errors import StorageUnavailable


class _NotRead(Exception):
    """A copy's position is being read for the feed."""


class ShardParts:
    """The slots of one feed, its positions, and the turn among shards."""

    def __init__(
        self,
        source: FeedSource,
        user_id: str | None,
        after: dict[int, int | None] | None,
        wake: Callable[[], None],
        reads: Mapping[tuple[int, UUID], int] | None = None,
    ) -> None:
        self.source = source
        self.user_id = user_id
        self.stream = None if user_id is None else user_aggregate_id(user_id)
        self.wake = wake
        self.slots: dict[int, Slot] = {}
        self.taken: dict[int, int] = {}  # shard -> position read through
        self.newer_than: dict[int, int] = {}  # shard -> stamp its moves must pass
        self.home: int | None = None  # the shard of the feed's user, if known
        self.closed = False  # set by the feed: no part is made after
        self._turn = 0
        self._seen = source.version
        for shard in source.shard_ids():
            self._add(shard, None if after is None else after.get(shard, 0))
            if after is not None:  # copies taken before: moves read from now on
                self.newer_than[shard] = source.stamp()
        self.reads = None  # a user's feed: its positions are its stream's
        if self.stream is None:
            loaded = None if after is None else dict(reads or {})
            shards = sorted(self.slots)
            self.reads = MovedReads(self.link, shards, loaded, source.stamp())

    def _add(self, shard: int, start: int | None) -> None:
        self.slots[shard] = Slot(start)
        if start is not None:
            self.taken[shard] = start

    def link(self, shard: int) -> ShardLink:
        return self.source.link(shard)

    def positions(self) -> dict[int, int | None]:
        return {shard: self.taken.get(shard) for shard in self.slots}

    def text(self) -> str:
        """The feed's position as text (with what ``reads`` keeps below it)."""
        more = () if self.reads is None else self.reads.text_parts(self.taken)
        return position_text(self.positions(), more)

    # Heads.

    def ask_head(self, shard: int, lock: threading.Condition) -> None:
        """Asks the shard's hub for its head (told in the hub's thread), or the
        link to reach the shard first."""
        slot, link = self.slots[shard], self.link(shard)
        hub = link.hub()
        if hub is None:
            self._await_reach(slot, link)
            return
        slot.asking = True

        def told(head: int | None, failure: BaseException | None) -> None:
            with lock:
                slot.asking = False
                if head is None:
                    slot.failure = failure
                    self._await_reach(slot, link)
                else:
                    self.started_at(shard, head)
            self.wake()

        hub.request_head(told)

    def _await_reach(self, slot: Slot, link: ShardLink) -> None:
        if slot.reach_from is None:
            slot.reach_from = link.reaches
        link.ask_reach(self.wake)

    def started_at(self, shard: int, head: int) -> None:
        slot = self.slots[shard]
        slot.start, slot.failure, slot.reach_from = head, None, None
        self.taken[shard] = head

    # Taking.

    def take(self, failing: Failures) -> ShardedChange | None:
        """The next event of any shard, in turn; the shards that failed to give
        one are put in ``failing``."""
        self._new_shards()
        shards = sorted(self.slots)
        for offset in range(len(shards)):
            shard = shards[(self._turn + offset) % len(shards)]
            change = self._take_from(shard, failing)
            if change is not None:
                self._turn = (self._turn + offset + 1) % len(shards)
                return change
        return None

    def _take_from(self, shard: int, failing: Failures) -> ShardedChange | None:
        slot = self.slots[shard]
        while True:
            if not slot.held and not self._pull(shard, slot, failing):
                return None
            position, event = slot.held[0]
            verdict = self._verdict(shard, slot, position, event)
            if verdict is None:
                failure = self.link(shard).failure
                if failure is not None:
                    failing[shard] = failure
                return None
            slot.held.popleft()
            self.taken[shard] = position
            taken, copied_from = verdict
            if not taken:
                return self._given(shard, event, copied_from)

    def _pull(self, shard: int, slot: Slot, failing: Failures) -> bool:
        part = self._part(shard, slot)
        if part is None:
            failure = slot.failure or self.link(shard).failure
            if failure is not None:
                failing[shard] = failure
            return False
        try:
            change = part.take()
        except StorageUnavailable as failure:
            failing[shard] = failure
            return False
        if change is None:
            if slot.failure is not None:  # it could not catch up
                failing[shard] = slot.failure
            return False
        slot.held.append(change)
        return True

    def _part(self, shard: int, slot: Slot) -> ChangeFeed | None:
        """The shard's feed, made here if that needs no I/O."""
        if slot.part is not None or self.closed:
            return slot.part
        link = self.link(shard)
        if slot.start is None:
            if slot.asking:
                return None
            if slot.reach_from is None or link.reaches <= slot.reach_from:
                self._await_reach(slot, link)
                return None
            self.started_at(shard, link.reached_head or 0)
        hub = link.hub()
        if hub is None:
            self._await_reach(slot, link)
            return None
        if (slot.start or 0) > hub.known_head():
            return None  # made by ``new_part`` in a thread (it reads the head)
        part = self.new_part(shard, hub)
        self.set_part(shard, part)
        return part

    def new_part(self, shard: int, hub: FeedHub) -> ChangeFeed:
        """The shard's feed from its start; reads the shard's head (blocking)
        when the start lies beyond the head its hub last read, and refuses a
        start beyond the head (InvalidContextInput). Runs without the lock."""
        part = ChangeFeed(hub, self.user_id, self.slots[shard].start or 0)
        part.set_waker(self.wake)
        return part

    def set_part(self, shard: int, part: ChangeFeed) -> None:
        slot = self.slots[shard]
        slot.part, slot.failure = part, None

    def _verdict(
        self, shard: int, slot: Slot, position: int, event: LedgerEvent
    ) -> tuple[bool, int | None] | None:
        """(taken from another shard's log, the shard a copy came from); None
        while the moves around it are read."""
        link = self.link(shard)
        newer_than = self.newer_than.get(shard, 0)
        moves = link.window(position, newer_than)
        if moves is None:
            settled = slot.part.position if slot.part is not None else position
            link.ask_window(position, settled, self.wake)
            return None
        copied_from = _copied_from(moves, position)
        stream = user_aggregate_id(event.user_id)
        copy = moves.copies.get(position)
        places = set() if copy is None else {at for at, _ in copy.places}
        positions = self._positions_for(shard, stream, moves, places)
        if positions is None:
            return None
        try:
            taken = taken_elsewhere(
                position,
                stream,
                event.version,
                moves=moves,
                positions=positions,
                copy_at=self._copy_at(newer_than),
            )
        except _NotRead:
            return None
        departed = stream in moves.departed
        if self.reads is not None and departed and position not in moves.copies:
            self.reads.read(shard, stream, position)  # an original read here
        return taken, copied_from

    def _positions_for(
        self, shard: int, stream: UUID, moves: MovesAround, places: set[int]
    ) -> Mapping[int, int] | None:
        """The positions the rule takes for ``stream`` (None: being read)."""
        reads = self.reads
        if reads is None:
            return self.taken
        for judged in {shard} | places:
            if not reads.ready(judged, self.taken, self.wake):
                return None
        reads.notice(shard, moves, before=self.taken.get(shard, 0))
        return reads.positions(stream, self.taken)

    def _copy_at(self, newer_than: int) -> CopyPosition:
        def copy_at(target: int, stream: UUID, version: int) -> int | None:
            link = self.link(target)
            found = link.copy_at(stream, version, newer_than)
            if found == UNKNOWN:
                link.ask_copy(stream, version, self.wake)
                raise _NotRead
            return found

        return copy_at

    def _given(
        self, shard: int, event: LedgerEvent, copied_from: int | None
    ) -> ShardedChange:
        if copied_from is not None:  # its original may still be there: read anew
            self.newer_than[copied_from] = self.source.stamp()
        if self.stream is not None:
            self.home = shard
        if self.reads is not None:
            self.reads.prune(self.taken, self.wake)
        return self.text(), event

    def _new_shards(self) -> None:
        if self.source.version == self._seen:
            return
        self._seen = self.source.version
        for shard in self.source.shard_ids():
            if shard not in self.slots:  # added after the feed started: all of it
                self._add(shard, 0)
                if self.reads is not None:
                    self.reads.add_shard(shard)

    # What needs a thread (``catch_up``).

    def behind(self) -> list[tuple[int, ChangeFeed]]:
        """Parts that read the store by themselves now."""
        now = time.monotonic()
        return [
            (shard, slot.part)
            for shard, slot in self.slots.items()
            if slot.part is not None
            and not slot.part.live
            and not slot.part.closed
            and now >= slot.retry_at
        ]

    def unmade(self) -> list[tuple[int, FeedHub]]:
        """Shards whose feed needs the shard's head read to be made."""
        now = time.monotonic()
        made: list[tuple[int, FeedHub]] = []
        for shard, slot in self.slots.items():
            if slot.part is not None or slot.start is None or now < slot.retry_at:
                continue
            hub = self.link(shard).hub()
            if hub is not None:
                made.append((shard, hub))
        return made

    def failed(self, shard: int, failure: BaseException | None) -> None:
        """Records how catching up went (None: it read)."""
        slot = self.slots[shard]
        slot.failure = failure
        if failure is not None:
            slot.retry_at = time.monotonic() + RETRY_SECONDS


def _copied_from(moves: MovesAround, position: int) -> int | None:
    copy = moves.copies.get(position)
    return None if copy is None else copy.from_shard
