"""The one reader of the log that serves all of a ledger's change feeds.

While a feed is open, ``FeedHub``'s thread polls the log's safe head
(``safe_head``, the same gap-free bound as the views: an event that commits late
has a lower position and is waited for, never skipped), reads the events up to it
once, decodes each event that some open feed wants once (as history reads it),
and puts it in those feeds' queues. An idle feed of one user is a dict entry: the
hub's work grows with the events stored, not with the feeds open. It reads
through the ledger's log reader (on PostgreSQL a pool of its own), key lookups
included, so a wait at the safe head never holds a connection that commands
need. The consumer's side, ``ChangeFeed``, is in ``ledger._store.feed``; what
the feeds hold (an event decoded, or ``Damaged``) in ``ledger._store.feed_items``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import TYPE_CHECKING, NoReturn
from uuid import UUID

from eventsourcing.persistence import ApplicationRecorder

from ledger import _metrics as metrics
from ledger._domain.events import EVENT_TOPICS
from ledger._store.backends import Backend, LogRow, as_stream_id, safe_head
from ledger._store.failures import ActiveCalls, ledger_error
from ledger._store.feed_items import Item, decode_all
from ledger._store.records import RecordReader
from ledger._store.urls import Storage
from ledger.errors import LedgerClosed, LedgerConfigError

if TYPE_CHECKING:
    from ledger._store.feed import ChangeFeed as Subscriber

POLL_SECONDS = 0.05
"""How often a ledger with open feeds reads its log's safe head."""
CLOSE_WAIT_SECONDS = 5.0
"""How long closing a ledger waits for its feeds' reads under way."""
PAGE = 500
"""Events read from the store at a time (by the hub, or by a feed catching up)."""
IDLE_SECONDS = 1.0
"""How long the hub's thread stays once no feed is open."""

HeadCallback = Callable[[int | None, BaseException | None], None]
"""Told the safe head read for it, or what made the read fail."""


class FeedHub:
    """Reads the log once for all of a ledger's feeds and hands each feed what it
    wants. Its thread runs while a feed is open or a head is asked for.

    Every read of the store by the hub or a feed runs inside ``reading()``;
    ``close()`` waits for those to end, so the ledger's connections are never
    closed under a read.
    """

    def __init__(
        self,
        *,
        reader: Callable[[], ApplicationRecorder],
        records: RecordReader,
        backend: Backend,
        storage: Storage,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self._reader = reader
        self.records = records
        self.backend = backend
        self.storage = storage
        self._poll = poll_seconds
        self.lock = threading.Lock()
        self._wake = threading.Condition(self.lock)
        self._requests: list[HeadCallback] = []
        self._position: int | None = None  # dispatched through here
        self._head = -1
        self._failure: BaseException | None = None
        self._feeds = 0
        self._all: set[Subscriber] = set()
        self._by_stream: dict[UUID | str, set[Subscriber]] = {}
        self._behind: set[Subscriber] = set()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._reads = ActiveCalls()

    @property
    def recorder(self) -> ApplicationRecorder:
        return self._reader()

    def reading(self) -> AbstractContextManager[bool]:
        """Marks a read of the store; yields False (read nothing) once closed."""
        return self._reads.running()

    @property
    def closed(self) -> bool:
        return self._closed

    # The safe head.

    def request_head(self, callback: HeadCallback) -> None:
        """Calls ``callback`` (in the hub's thread) with the first safe head read
        after this call, or with what made that read fail (LedgerClosed once the
        hub is closed). The callback must not block."""
        with self.lock:
            if self._closed:
                closed: BaseException | None = LedgerClosed()
            else:
                closed = None
                self._requests.append(callback)
                self._start()
                self._wake.notify_all()
        if closed is not None:
            callback(None, closed)

    def fresh_head(self) -> int:
        """The safe head, read now (by the hub's thread, for every caller waiting
        at the same moment); StorageUnavailable or LedgerClosed if it fails."""
        done = threading.Event()
        answer: list[tuple[int | None, BaseException | None]] = []

        def told(head: int | None, failure: BaseException | None) -> None:
            answer.append((head, failure))
            done.set()

        self.request_head(told)
        done.wait()
        head, failure = answer[0]
        if failure is not None:
            self.raise_failure(failure)
        if head is None:  # pragma: no cover  (a head or a failure is always told)
            raise LedgerClosed
        return head

    def last_head(self) -> int:
        """The safe head as the hub last read it (-1: not yet); while its reads
        fail, what made the last one fail is raised (StorageUnavailable)."""
        with self.lock:
            failure, head = self._failure, self._head
        if failure is not None:
            self.raise_failure(failure)
        return head

    def raise_failure(self, failure: BaseException) -> NoReturn:
        """Raises what a consumer raises for a failure of the hub's reads: a new
        error each time for a failure of the database, whose cause it is (the
        failure itself is shared by every feed and thread)."""
        error = ledger_error(self.storage, failure)
        if error is failure:
            raise failure
        raise error from failure

    # Feeds joining and leaving.

    def join(self, feed: Subscriber) -> None:
        with self.lock:
            if self._closed:
                return  # the feed reads as closed
            metrics.feeds_opened(1)
            self._feeds += 1
            self._attach(feed)
            self._start()
            self._wake.notify_all()  # an idle thread polls again

    def leave(self, feed: Subscriber) -> None:
        with self.lock:
            self._detach(feed)
            self._behind.discard(feed)
            if self._closed:
                return  # counted out when the hub closed
            self._feeds -= 1
            self._wake.notify_all()
        metrics.feeds_opened(-1)

    def attach(self, feed: Subscriber) -> bool:
        """Makes a feed that has caught up live; whether it is live."""
        with self.lock:
            return self._attach(feed)

    def _attach(self, feed: Subscriber) -> bool:
        if feed.live:
            return True
        if feed.shut:  # closed while it caught up: it never joins again
            return False
        if self._position is None or feed.own_position < self._position:
            self._behind.add(feed)
            return False
        self._behind.discard(feed)
        feed.go_live()
        if feed.stream is None:
            self._all.add(feed)
        else:
            self._by_stream.setdefault(feed.stream, set()).add(feed)
        return True

    def _detach(self, feed: Subscriber) -> None:
        if feed.stream is None:
            self._all.discard(feed)
        else:
            streams = self._by_stream.get(feed.stream)
            if streams is not None:
                streams.discard(feed)
                if not streams:
                    del self._by_stream[feed.stream]

    def known_head(self) -> int:
        """The safe head as last read (-1: not yet), without raising."""
        with self.lock:
            return self._head

    def failure_now(self) -> BaseException | None:
        """What made the hub's last read fail, if it did (under ``lock``)."""
        return self._failure

    def position_of_live(self) -> int:
        """Where the hub has delivered through (under ``lock``)."""
        return -1 if self._position is None else self._position

    def close(self) -> None:
        """Ends the feeds and waits for the reads of the store under way (at most
        CLOSE_WAIT_SECONDS: a PostgreSQL safe head may wait long for another
        session's transaction, and closing under it is safe there)."""
        with self.lock:
            self._closed = True
            still_open, self._feeds = self._feeds, 0
            requests, self._requests = self._requests, []
            feeds = [*self._all, *self._behind]
            feeds += [feed for group in self._by_stream.values() for feed in group]
            self._wake.notify_all()
            thread = self._thread
        metrics.feeds_opened(-still_open)
        for callback in requests:
            callback(None, LedgerClosed())
        for feed in feeds:
            feed.wake()
        self._reads.close(timeout=CLOSE_WAIT_SECONDS)
        if thread is not None and thread is not threading.current_thread():
            thread.join(CLOSE_WAIT_SECONDS)

    # The hub's thread.

    def _start(self) -> None:
        """Starts the thread if it is not running (under ``lock``)."""
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(
                target=self._run, name="ctxledger-feeds", daemon=True
            )
            self._thread.start()

    def _run(self) -> None:
        next_read = 0.0
        while True:
            with self.lock:
                if not self._await_work(next_read):
                    self._thread = None
                    self._position = None  # no feed holds it: start afresh
                    self._failure = None
                    return
                requests, self._requests = self._requests, []
            next_read = time.monotonic() + self._poll
            head, failure = self._read()
            for callback in requests:
                callback(head, failure)

    def _await_work(self, next_read: float) -> bool:
        """Waits (under ``lock``) until a head is asked for or the next read is
        due; False when the hub should stop: closed, or no feed and no request for
        IDLE_SECONDS (a feed that starts at a head just read joins meanwhile)."""
        idle_until = time.monotonic() + IDLE_SECONDS
        while not self._closed and not self._requests:
            now = time.monotonic()
            if self._feeds <= 0:
                if now >= idle_until:
                    return False
                self._wake.wait(idle_until - now)
                continue
            if now >= next_read:
                return True
            self._wake.wait(next_read - now)
        return not self._closed

    def _read(self) -> tuple[int | None, BaseException | None]:
        """Reads the safe head and delivers what lies up to it."""
        try:
            with self.reading() as open_:
                if not open_:
                    return None, LedgerClosed()
                head = safe_head(self.recorder)
                self._advance(head)
        except Exception as error:  # noqa: BLE001  (handed to the feeds waiting)
            with self.lock:
                self._failure = error
                woken = [*self._all, *self._behind]
                woken += [f for group in self._by_stream.values() for f in group]
            for feed in woken:
                feed.wake()
            return None, error
        return head, None

    def _advance(self, head: int) -> None:
        with self.lock:
            self._failure = None
            if self._position is None:
                self._position = head  # the first read: nobody is behind it yet
            start = self._position
        while start < head:
            rows = self.backend.log_rows(self.recorder, start, PAGE, head)
            through = rows[-1][0] if len(rows) == PAGE else head
            start = self._deliver(start, through, rows)
            if start < 0:
                return  # the hub was reset meanwhile
        with self.lock:
            self._head = max(self._head, head)
            behind = list(self._behind)
        for feed in behind:
            feed.wake()

    def _deliver(self, start: int, through: int, rows: list[LogRow]) -> int:
        """Hands the rows to the feeds that want them; the new position (-1 if the
        hub's position changed under it). Rows are decoded outside the lock, and
        a page is offered whole or not at all (a failure offers nothing)."""
        decoded: dict[int, Item] = {}
        woken: set[Subscriber] = set()
        while True:
            with self.lock:
                if self._position != start:
                    return -1
                wanted = [row for row in rows if self._wants(row)]
                missing = [row for row in wanted if row[0] not in decoded]
                if not missing:  # (a feed may have joined while the page decoded)
                    for row in wanted:
                        self._offer(row, decoded[row[0]], woken)
                    self._position = through
                    break
            decoded.update(self._decoded_all(missing))
        for feed in woken:
            feed.wake()
        return through

    def _wants(self, row: LogRow) -> bool:
        stream = as_stream_id(row[1])
        return bool(
            (self._all and row[3] in EVENT_TOPICS) or self._by_stream.get(stream)
        )

    def _offer(self, row: LogRow, item: Item, woken: set[Subscriber]) -> None:
        stream = as_stream_id(row[1])
        feeds = list(self._by_stream.get(stream, ()))
        if row[3] in EVENT_TOPICS:
            feeds += self._all
        for feed in feeds:
            if feed.offer(row[0], item):
                woken.add(feed)
            elif not feed.live:  # its consumer fell behind: it catches up alone
                metrics.count_feed_behind()
                self._detach(feed)
                if not feed.shut:
                    self._behind.add(feed)
                woken.add(feed)

    def _decoded_all(self, rows: list[LogRow]) -> dict[int, Item]:
        """The rows decoded by position; their users' keys looked up together."""
        with self.keys_on_reader():
            streams = {as_stream_id(row[1]) for row in rows}
            # A damaged key row fails the prefetch: each row's own lookup then
            # says whose it is.
            with suppress(LedgerConfigError):
                self.records.keys.prefetch_streams(
                    stream for stream in streams if isinstance(stream, UUID)
                )
            return decode_all(self.records, rows)

    @contextmanager
    def keys_on_reader(self) -> Iterator[None]:
        """A scope of key lookups made on a transaction of the log reader's pool,
        never on a connection that commands need."""
        keys = self.records.keys
        datastore = getattr(self.recorder, "datastore", None)
        if datastore is None:  # memory: nothing to connect to
            with keys.reading():
                yield
            return
        with (
            datastore.transaction(commit=False) as cursor,
            keys.reading(cursor=cursor),
        ):
            yield
