"""The change feed: every event stored by any process, in log order, each once.

One ``HeadWatcher`` per open ledger polls the log's safe head (``safe_head``, the
same gap-free bound as the views: an event that commits late has a lower position
and is waited for, never skipped) and wakes the feeds when it moves. Each feed then
reads what it has not seen from the store, a page at a time, so a feed that falls
behind catches up from the store: nothing is queued in memory beyond one page.

A feed of one user reads only that user's stream (by version, from the primary
key), not the whole log. Versions of a stream take positions in the same order
(a version is appended only after the one before it committed), so "versions
after v, at positions up to the head" is exactly what the log holds for it.
"""

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from types import TracebackType
from typing import Any, Self
from uuid import UUID

from eventsourcing.persistence import ApplicationRecorder, Mapper, Notification

from ledger.domain.contexts import user_aggregate_id
from ledger.domain.events import EVENT_TOPICS, ContextEvent
from ledger.domain.models import LedgerEvent
from ledger.errors import LedgerCorrupted, LedgerError
from ledger.store.backends import Backend, as_stream_id, safe_head
from ledger.store.failures import ActiveCalls, storage_failures
from ledger.store.urls import Storage

POLL_SECONDS = 0.05
"""How often a ledger with open feeds reads its log's safe head."""
CLOSE_WAIT_SECONDS = 5.0
"""How long closing a ledger waits for its feeds' reads under way."""
PAGE = 500
"""Events a feed reads from the store at a time (all it holds in memory)."""

Change = tuple[int, LedgerEvent]


class HeadWatcher:
    """Reads the safe head every ``poll_seconds`` while feeds are open, in one
    daemon thread per ledger, and wakes the feeds waiting for it to move.

    Every read of the store by a feed (and by the watching thread) runs inside
    ``reading()``; ``close()`` waits for those to end, so the ledger's connections
    are never closed under a read.
    """

    def __init__(self, recorder: ApplicationRecorder, poll_seconds: float) -> None:
        self._recorder = recorder
        self._poll = poll_seconds
        self._moved = threading.Condition()
        self._head = -1
        self._users = 0
        self._failure: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._reads = ActiveCalls()

    def reading(self) -> AbstractContextManager[bool]:
        """Marks a read of the store; yields False (read nothing) once closed."""
        return self._reads.running()

    def head_now(self) -> int:
        """The safe head, read now (-1 once closed)."""
        with self.reading() as open_:
            return safe_head(self._recorder) if open_ else -1

    @property
    def last_head(self) -> int:
        """The safe head as last read by the watching thread (-1: not yet); while
        its readings fail, what made the last one fail is raised."""
        with self._moved:
            if self._failure is not None:
                raise self._failure
            return self._head

    @property
    def closed(self) -> bool:
        return self._closed

    def join(self) -> None:
        with self._moved:
            self._users += 1
            if self._thread is None or not self._thread.is_alive():
                self._failure = None  # of an earlier watch: read afresh
                self._thread = threading.Thread(
                    target=self._watch, name="ctxledger-head", daemon=True
                )
                self._thread.start()

    def leave(self) -> None:
        with self._moved:
            self._users -= 1
            self._moved.notify_all()

    def close(self) -> None:
        """Ends the watch and waits for the reads of the store under way (at most
        CLOSE_WAIT_SECONDS: a PostgreSQL safe head may wait long for another
        session's transaction, and closing under it is safe there)."""
        with self._moved:
            self._closed = True
            self._moved.notify_all()
            thread = self._thread
        self._reads.close(timeout=CLOSE_WAIT_SECONDS)
        if thread is not None and thread is not threading.current_thread():
            thread.join(CLOSE_WAIT_SECONDS)

    def wait_beyond(self, position: int, timeout: float) -> int:
        """The head once it is past ``position``, or as it is after ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._moved:
            while self._head <= position and not self._closed:
                if self._failure is not None:  # until a reading succeeds again
                    raise self._failure
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._moved.wait(left)
            return self._head

    def _watch(self) -> None:
        while True:
            with self._moved:
                if self._closed or self._users <= 0:
                    self._thread = None
                    return
            try:
                head = self.head_now()
                if head < 0:
                    continue  # closed: the loop ends at its top
            except Exception as error:  # noqa: BLE001  (handed to the feeds waiting)
                with self._moved:
                    self._failure = error
                    self._moved.notify_all()
            else:
                with self._moved:
                    self._failure = None
                    if head != self._head:
                        self._head = head
                        self._moved.notify_all()
            time.sleep(self._poll)


class ChangeFeed(Iterator[Change]):
    """``(position, event)`` of each event stored after ``after``, in log order.

    Iterating blocks until the next event; ``close()`` (from any thread), or
    closing the ledger, ends the iteration within one poll. While the database
    cannot be read, iterating raises StorageUnavailable and the feed keeps its
    position: iterate again to go on. ``poll()`` returns what is there now without
    waiting. Use it as a context manager to close it.
    """

    def __init__(
        self,
        *,
        recorder: ApplicationRecorder,
        mapper: Mapper[UUID],
        backend: Backend,
        watcher: HeadWatcher,
        storage: Storage,
        user_id: str | None,
        after: int | None,
    ) -> None:
        self._storage = storage
        self._recorder = recorder
        self._mapper = mapper
        self._backend = backend
        self._watcher = watcher
        self._user_id = user_id
        self._stream = None if user_id is None else user_aggregate_id(user_id)
        with storage_failures(storage):
            self.position = watcher.head_now() if after is None else after
        """The position of the last event this feed has passed."""
        self._version: int | None = None  # the user's last version passed
        self._ready: deque[Change] = deque()
        self._closed = threading.Event()
        watcher.join()

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Change:
        while not self._ready:
            if self.closed:
                raise StopIteration
            with storage_failures(self._storage):
                head = self._watcher.wait_beyond(self.position, POLL_SECONDS * 4)
            self.fill(head)
        return self._ready.popleft()

    def poll(self, head: int | None = None) -> list[Change]:
        """What is stored after the feed's position up to ``head`` (the safe head
        read now when None), at most a page, without waiting; the position moves
        past it."""
        if head is None:
            with storage_failures(self._storage):
                head = self._watcher.head_now()
        self.fill(head)
        changes = list(self._ready)
        self._ready.clear()
        return changes

    def fill(self, head: int) -> None:
        """Reads a page of what lies after the position, up to ``head``, unless
        read events are still waiting to be taken (``take``)."""
        if not self._ready and not self.closed and head > self.position:
            with storage_failures(self._storage):
                self._read(head)

    def take(self) -> Change | None:
        """The next event read, or None."""
        return self._ready.popleft() if self._ready else None

    def known_head(self) -> int:
        """The safe head as the ledger's watching thread last read it (no I/O)."""
        with storage_failures(self._storage):
            return self._watcher.last_head

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._watcher.leave()

    @property
    def closed(self) -> bool:
        """Closed itself, or its ledger was closed."""
        return self._closed.is_set() or self._watcher.closed

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _read(self, head: int) -> None:
        """Reads a page of what lies after the position, up to ``head`` (nothing
        once the ledger is closed)."""
        with self._watcher.reading() as open_:
            if open_:
                self._read_page(head)

    def _read_page(self, head: int) -> None:
        if self._stream is None:
            page = list(
                self._recorder.select_notifications(
                    start=self.position,
                    limit=PAGE,
                    stop=head,
                    topics=EVENT_TOPICS,
                    inclusive_of_start=False,
                )
            )
        else:
            if self._version is None:
                self._version = self._backend.stream_version_at(
                    self._recorder, self._stream, self.position
                )
            page = self._backend.stream_after(
                self._recorder, self._stream, self._version, head, PAGE
            )
        keys = getattr(self._mapper, "keys", None)
        with nullcontext() if keys is None else keys.reading():
            whole = self._take_page(page)
        if whole and len(page) < PAGE:
            self.position = max(self.position, head)  # all up to it has been read

    def _take_page(self, page: list[Notification]) -> bool:
        """Decodes the page into ready changes; False if it stopped before an
        undecodable event (read next time, after the ones before it)."""
        for notification in page:
            try:
                change = (notification.id, self._decoded(notification))
            except LedgerCorrupted:
                if self._ready:
                    return False  # the events before it go first
                self.position = notification.id  # reported once, then passed
                self._version = notification.originator_version
                raise
            self._ready.append(change)
            self.position = notification.id
            self._version = notification.originator_version
        return True

    def _decoded(self, notification: Notification) -> LedgerEvent:
        problem: str | None = None
        try:
            event: Any = self._mapper.to_domain_event(notification)
        except LedgerError:
            raise  # a master key that does not open the keys: not this event's fault
        except ValueError as error:  # MapperDeserialisationError
            problem = str(error)
        else:
            if isinstance(event, ContextEvent):
                return event.to_ledger_event()
            problem = f"topic {notification.topic!r} is not an event of a context"
        stream = as_stream_id(notification.originator_id)
        raise LedgerCorrupted(
            self._user_id or f"of stream {stream}",
            f"the event at position {notification.id}: {problem}",
        )
