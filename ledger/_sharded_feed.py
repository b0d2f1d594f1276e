"""The change feed of a sharded ledger: each shard's log in order, each event once.

A ``ShardedChangeFeed`` holds one ``ChangeFeed`` per shard, on that shard's own
ledger, so the shard's ``FeedHub`` reads its log once for every feed of the
process; a feed of one user holds that user's stream on every shard (an entry in
each hub, no query), so it follows the user when the user moves. It takes what
the shards' feeds hold in turn and gives each event with the feed's position per
shard (``ledger._feed_positions``), which ``after=`` takes back.

Each event once across a move: an event a move copied to another shard is taken
from one log only, by the rule of ``ledger._store.shard_copies`` with the feed's
own positions, so a feed resumed from a position decides the same
(``ledger._sharded_feed_parts``). The moves are read by the shards' links, once
for all feeds of the process (``ledger._sharded_feed_links``).

A shard that cannot be read holds back only its own events: the feed gives the
other shards' events and raises StorageUnavailable only when none has one (a
feed of one user: only when its user's shard fails), keeping its position; it
goes on with the shard by itself once the shard is back.
"""

import threading
from collections.abc import Callable, Iterator
from contextlib import suppress
from types import TracebackType
from typing import TYPE_CHECKING, Self
from uuid import UUID

from ledger._domain import validation
from ledger._feed_positions import (
    moved_reads,
    position_text,
    sharded_position,
    unknown_shards,
)
from ledger._sharded_feed_parts import ShardParts
from ledger._sharded_feed_slots import Failures, ShardedChange, told_failure
from ledger._sharded_feed_source import FeedSource, source_of
from ledger._store.feed import SYNC_WAIT_SECONDS
from ledger.errors import LedgerError, StorageUnavailable

if TYPE_CHECKING:
    from ledger._sharded import ShardedLedger

POLL_WAIT_SECONDS = 5.0
"""How long ``poll()`` waits at most for the moves around the events it read."""


class ShardedChangeFeed(Iterator[ShardedChange]):
    """``(position, event)`` of each event stored after ``after`` on any shard,
    each shard's in its log's order, each event once; ``position`` is the text
    of a position per shard. Iterate (blocking), ``poll()``, ``close()`` (from
    any thread), or use it as a context manager."""

    def __init__(
        self,
        source: FeedSource,
        user_id: str | None,
        after: dict[int, int | None] | None,
        reads: dict[tuple[int, UUID], int] | None = None,
    ) -> None:
        self._source = source
        self._signal = threading.Condition()
        self._parts = ShardParts(source, user_id, after, self.wake, reads)
        self._woken = False
        self._waker: Callable[[], None] | None = None
        self._closed = False
        source.join(self)

    # Starting.

    def prepare(self) -> None:
        """Opens the shards' ledgers, finds the user's shard, and makes the feeds
        of the shards whose start is known (blocking; InvalidContextInput for a
        start beyond a shard's head)."""
        for shard in self._parts.slots:
            link = self._source.link(shard)
            if link.hub() is None and link.failure is None:
                with suppress(LedgerError):  # told by take() while it lasts
                    link.open_now()
        user_id = self._parts.user_id
        if user_id is not None:
            try:
                self._parts.home = self._source.ledger.shard_of(user_id)
            except LedgerError:
                self._parts.home = None  # every shard's failure is told
        self._make_parts()

    def ask_heads(self) -> None:
        """Asks each shard that starts at its head for it, without waiting."""
        with self._signal:
            for shard, slot in self._parts.slots.items():
                if slot.start is None and not slot.asking:
                    self._parts.ask_head(shard, self._signal)

    @property
    def started(self) -> bool:
        """Whether every head asked for was told (or failed)."""
        with self._signal:
            return self._started()

    def _started(self) -> bool:
        return self._closed or not any(s.asking for s in self._parts.slots.values())

    def wait_started(self) -> None:
        with self._signal:
            self._signal.wait_for(self._started)

    # Waking.

    def wake(self) -> None:
        """Tells the consumer something may have changed."""
        with self._signal:
            self._woken = True
            self._signal.notify_all()
        waker = self._waker
        if waker is not None:
            waker()

    def set_waker(self, waker: Callable[[], None] | None) -> None:
        """``waker`` is called (from any thread; it must not block) whenever the
        feed may have something new: how an asyncio consumer waits."""
        self._waker = waker

    # Taking.

    def take(self) -> ShardedChange | None:
        """The next event, without waiting or I/O; None if no shard has one now.
        StorageUnavailable when none has one and a shard that matters to this
        feed cannot be read (every shard; for a user's feed, the user's)."""
        with self._signal:
            self._woken = False
            failing: Failures = {}
            change = self._parts.take(failing)
            if change is None:
                parts = self._parts
                told_failure(failing, parts.home, every=parts.stream is None)
            return change

    @property
    def live(self) -> bool:
        """False while a shard's feed must read the store (``catch_up``)."""
        with self._signal:
            return not (self._parts.behind() or self._parts.unmade())

    def catch_up(self) -> bool:
        """Reads a page for each shard's feed that is behind, and makes the feeds
        that need a shard's head (blocking). Whether anything was read."""
        with self._signal:
            behind = self._parts.behind()
        progressed = False
        for shard, part in behind:
            try:
                progressed = part.catch_up() or progressed
                failure: BaseException | None = None
            except StorageUnavailable as error:
                failure = error
            with self._signal:
                self._parts.failed(shard, failure)
        return self._make_parts() or progressed

    def _make_parts(self) -> bool:
        with self._signal:
            unmade = self._parts.unmade()
        for shard, hub in unmade:
            try:
                part = self._parts.new_part(shard, hub)  # may read the head
            except StorageUnavailable as error:
                with self._signal:
                    self._parts.failed(shard, error)
                continue
            with self._signal:
                closed = self._closed or self._parts.slots[shard].part is not None
                if not closed:
                    self._parts.set_part(shard, part)
            if closed:
                part.close()
        return bool(unmade)

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> ShardedChange:
        while True:
            change = self.take()
            if change is not None:
                return change
            if self.closed:
                raise StopIteration
            if not self.live and self.catch_up():
                continue
            with self._signal:
                if not self._woken and not self.closed:
                    self._signal.wait(SYNC_WAIT_SECONDS)

    def poll(self) -> list[ShardedChange]:
        """What each shard holds after the feed's position up to its safe head
        read now (at most a page per shard that is behind), without waiting for
        new events."""
        self._pull_all()
        changes: list[ShardedChange] = []
        with self._signal:
            while not self._closed:
                try:
                    change = self.take()
                except StorageUnavailable:
                    if changes:
                        break
                    raise
                if change is not None:
                    changes.append(change)
                elif not self._judging() or not self._signal.wait(POLL_WAIT_SECONDS):
                    break
        return changes

    def _pull_all(self) -> None:
        self._make_parts()
        with self._signal:
            parts = [(s, slot.part) for s, slot in self._parts.slots.items()]
        for shard, part in parts:
            if part is None or self._failing(shard):
                continue  # take() tells a failure without waiting for it again
            try:
                polled = part.poll()
            except StorageUnavailable as error:
                with self._signal:
                    self._parts.failed(shard, error)
                continue
            with self._signal:
                self._parts.slots[shard].held.extend(polled)

    def _failing(self, shard: int) -> bool:
        """Whether the shard's last read failed (its hub's, or its link's)."""
        hub = self._source.link(shard).hub()
        try:
            return hub is None or hub.last_head() < -1
        except LedgerError:
            return True

    def _judging(self) -> bool:
        """Whether events wait for the moves around them (and their shard's link
        is not failing)."""
        return any(
            slot.held and self._source.link(shard).failure is None
            for shard, slot in self._parts.slots.items()
        )

    @property
    def position(self) -> str:
        """The position through which the feed has read each shard's log, taken
        or not: a consumer resumes from the position of the last event it took."""
        with self._signal:
            read: dict[int, int | None] = {}
            for shard, slot in self._parts.slots.items():
                read[shard] = slot.part.position if slot.part else slot.start
            return position_text(read)

    def close(self) -> None:
        with self._signal:
            if self._closed:
                return
            self._closed = self._parts.closed = True
            parts = [s.part for s in self._parts.slots.values() if s.part]
        for part in parts:
            part.close()
        self._source.leave(self)
        self.wake()

    @property
    def closed(self) -> bool:
        """Closed itself, or its ledger was closed."""
        return self._closed or self._source.closed

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_sharded_feed(
    ledger: "ShardedLedger", user_id: str | None, after: object
) -> ShardedChangeFeed:
    """A feed of the sharded ledger, prepared (blocking) but not at its heads yet:
    ``ask_heads`` then wait for ``started``."""
    user = validation.optional_identifier("user_id", user_id)
    start = None if after is None else sharded_position("after", after)
    reads = moved_reads("after", after)
    source = source_of(ledger)
    if start is not None:
        named = {*start, *(shard for shard, _ in reads)}
        unknown_shards("after", after, dict.fromkeys(named), source.shard_ids())
    feed = ShardedChangeFeed(source, user, start, reads)
    try:
        feed.prepare()
    except BaseException:
        feed.close()
        raise
    return feed


def sharded_changes(
    ledger: "ShardedLedger", user_id: str | None, after: object
) -> ShardedChangeFeed:
    """``ShardedLedger.changes``: the feed, started at each shard's head now
    (a shard out of reach: at its head once reached) or after ``after``."""
    feed = open_sharded_feed(ledger, user_id, after)
    feed.ask_heads()
    feed.wait_started()
    return feed
