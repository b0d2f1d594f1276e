"""The change feed: every event stored by any process, in log order, each once.

One ``FeedHub`` per open ledger (``ledger._store.feed_hub``) reads the log for
all of that ledger's feeds and puts each event in the queues of the feeds that
want it; this module is the consumer's side.

A feed is *live* while the hub delivers to it. A feed that starts behind the hub
(``after`` an older position), or whose consumer left FEED_BUFFER events untaken
(a slow socket), reads from the store by itself, a page at a time and only when
its queue is empty, until it has caught up with the hub; then it is live again.
So a slow consumer costs its own reads and at most FEED_BUFFER events of memory,
and never delays the other feeds.

A feed of one user reads only that user's stream when it catches up (by version,
from the primary key). Versions of a stream take positions in the same order (a
version is appended only after the one before it committed), so "versions after
v, at positions up to the head" is exactly what the log holds for it.
"""

import threading
from collections import deque
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Self
from uuid import UUID

from ledger._domain.contexts import user_aggregate_id
from ledger._domain.events import EVENT_TOPICS
from ledger._domain.models import LedgerEvent
from ledger._store.failures import storage_failures
from ledger._store.feed_hub import PAGE, FeedHub
from ledger._store.feed_items import Damaged, Item, beyond, decode_all, log_row
from ledger.errors import LedgerCorrupted

FEED_BUFFER = 1000
"""Events a live feed holds for its consumer; one more and it catches up alone."""
SYNC_WAIT_SECONDS = 1.0
"""The longest a blocking iteration sleeps before it looks again (a safety net:
closing, new events and failures wake it at once)."""

Change = tuple[int, LedgerEvent]


class ChangeFeed(Iterator[Change]):
    """``(position, event)`` of each event stored after ``after``, in log order.

    Iterating blocks until the next event; ``close()`` (from any thread), or
    closing the ledger, ends the iteration. While the database cannot be read,
    iterating raises StorageUnavailable and the feed keeps its position: iterate
    again to go on. ``poll()`` returns what is there now without waiting. Use it
    as a context manager to close it.
    """

    def __init__(self, hub: FeedHub, user_id: str | None, after: int | None) -> None:
        self._hub = hub
        self._user_id = user_id
        self.stream: UUID | None = (
            None if user_id is None else user_aggregate_id(user_id)
        )
        start = hub.fresh_head() if after is None else after
        if start > hub.known_head():  # read the head again before refusing it
            beyond(start, hub.fresh_head())
        self.own_position = start
        """Where a feed that is not live has read through."""
        self._floor = start  # a live feed takes only what lies after it
        self._version: int | None = None  # the user's last version passed
        self._ready: deque[Item] = deque()
        self._signal: threading.Condition | None = None  # made by a blocking reader
        self._waker: Callable[[], None] | None = None
        self._closed = False
        self.live = False
        hub.join(self)

    # Called by the hub, under its lock.

    def go_live(self) -> None:
        self.live = True
        self._floor = self.own_position

    def offer(self, position: int, item: Item) -> bool:
        """Takes an item the hub delivers; False (and the feed is no longer live)
        when its queue is full."""
        if position <= self._floor:
            return False
        if len(self._ready) >= FEED_BUFFER:
            self.live = False
            self.own_position = position - 1  # all it wants before is queued
            self._version = None
            return False
        self._ready.append(item)
        return True

    def wake(self) -> None:
        """Tells the consumer something changed (an event, a failure, closing)."""
        with self._hub.lock:
            if self._signal is not None:
                self._signal.notify_all()
        waker = self._waker
        if waker is not None:
            waker()

    def set_waker(self, waker: Callable[[], None] | None) -> None:
        """``waker`` is called (from any thread, it must not block) whenever the
        feed may have something new: how an asyncio consumer waits without
        polling."""
        self._waker = waker

    # The consumer's side.

    @property
    def shut(self) -> bool:
        """Closed itself (not counting its ledger's closing)."""
        return self._closed

    @property
    def position(self) -> int:
        """The position through which this feed has read the log into its queue,
        taken or not: a consumer that resumes later passes the position of the
        last event it took as ``after``, not this."""
        with self._hub.lock:
            if self.live:
                return max(self._floor, self._hub.position_of_live())
            return self.own_position

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Change:
        while True:
            change = self.take()
            if change is not None:
                return change
            if self.closed:
                raise StopIteration
            if not self.live and self.catch_up():
                continue
            with self._hub.lock:
                if not self._ready and not self._closed and not self._hub.closed:
                    if self._signal is None:
                        self._signal = threading.Condition(self._hub.lock)
                    self._signal.wait(SYNC_WAIT_SECONDS)

    def take(self) -> Change | None:
        """The next event read, or None; raises LedgerCorrupted for an event that
        does not decode (once), and StorageUnavailable while the hub's reads fail
        and nothing is queued."""
        with self._hub.lock:
            item = self._ready.popleft() if self._ready else None
            failure = self._hub.failure_now() if item is None and self.live else None
        if failure is not None:
            self._hub.raise_failure(failure)
        if isinstance(item, Damaged):
            raise LedgerCorrupted(
                self._user_id or f"of stream {item.stream}",
                f"the event at position {item.position}: {item.problem}",
            )
        return item

    def catch_up(self) -> bool:
        """For a feed that is not live: reads a page of what lies after its
        position, up to the hub's last head, or joins the hub once level with it.
        Whether the consumer has something to look at (else: wait for the head)."""
        head = self._hub.last_head()
        if self._hub.attach(self):
            return True
        if head <= self.own_position:
            return False
        with storage_failures(self._hub.storage), self._hub.reading() as open_:
            if open_:
                self._read_page(head)
        if not self._ready:
            self._hub.attach(self)
        return True

    def poll(self) -> list[Change]:
        """What is stored after the feed's position up to the safe head read now
        (at most a page, for a feed that is behind), without waiting."""
        head = self._hub.fresh_head()
        changes: list[Change] = []
        while True:
            change = self.take()
            if change is not None:
                changes.append(change)
                continue
            if self.live or self.closed or head <= self.own_position or changes:
                if not self.live and not self._ready:
                    self._hub.attach(self)  # level with the hub: joins it again
                return changes
            with storage_failures(self._hub.storage), self._hub.reading() as open_:
                if not open_:
                    return changes
                self._read_page(head)
            if not self._ready:
                self._hub.attach(self)
                return changes

    def close(self) -> None:
        with self._hub.lock:
            if self._closed:
                return
            self._closed = True
        self._hub.leave(self)
        self.wake()

    @property
    def closed(self) -> bool:
        """Closed itself, or its ledger was closed."""
        return self._closed or self._hub.closed

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _read_page(self, head: int) -> None:
        """Reads a page of what lies after the position, up to ``head``."""
        recorder, backend = self._hub.recorder, self._hub.backend
        if self.stream is None:
            page = list(
                recorder.select_notifications(
                    start=self.own_position,
                    limit=PAGE,
                    stop=head,
                    topics=EVENT_TOPICS,
                    inclusive_of_start=False,
                )
            )
        else:
            if self._version is None:
                self._version = backend.stream_version_at(
                    recorder, self.stream, self.own_position
                )
            page = backend.stream_after(
                recorder, self.stream, self._version, head, PAGE
            )
        items: list[Item] = []
        if page:
            with self._hub.keys_on_reader():
                decoded = decode_all(self._hub.records, [log_row(n) for n in page])
            items = list(decoded.values())
        with self._hub.lock:
            self._ready.extend(items)
            if page:
                self.own_position = page[-1].id
                self._version = page[-1].originator_version
            if len(page) < PAGE:
                self.own_position = max(self.own_position, head)
