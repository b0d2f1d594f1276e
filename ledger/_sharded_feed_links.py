"""One shard as the sharded change feeds of a process see it.

A ``ShardLink`` holds the shard's ledger (opened on first use; its ``FeedHub``
reads the shard's log once for every feed of the process), whether the shard can
be reached, and what the feeds need to take each event once across shards: the
moves around its log (``shard_copies.moves_around``) and the positions of copies
there (``shard_copies.copy_position``). Feeds ask; the link's own thread reads,
once for every feed that asked meanwhile, keeps the answer for the feeds after
them, and wakes the askers. So a feed never queries the database for these, and
an asyncio feed never waits for them in a thread.

An answer carries the stamp of its read (``stamps()``, taken before the read): a
feed that needs an answer newer than something it did (took a copy, resumed from
a position) passes that stamp, and older answers do not count for it.
"""

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from ledger._api import ContextLedger
from ledger._store.failures import storage_failures
from ledger._store.feed_hub import FeedHub
from ledger._store.shard_copies import MovesAround, copy_position, moves_around
from ledger.errors import LedgerClosed

WINDOW_SPAN = 2000
"""Positions of a shard's log one read of its moves covers at most."""
WINDOWS_KEPT = 8
COPIES_KEPT = 10_000
RETRY_SECONDS = 1.0
"""How long a link that failed waits before it reads the shard again."""
IDLE_SECONDS = 1.0

Wake = Callable[[], None]
Copy = tuple[UUID, int]
UNKNOWN = -1
"""``copy_at``: not read yet (asked for)."""


@dataclass(frozen=True)
class _Window:
    first: int
    last: int
    stamp: int
    moves: MovesAround


@dataclass
class _Asks:
    windows: dict[int, int]  # position -> the settled position it may read up to
    copies: set[Copy]
    reach: bool
    woken: set[Wake]


class ShardLink:
    """A shard's ledger and the moves around its log, for all feeds of a process."""

    def __init__(
        self,
        shard_id: int,
        opener: Callable[[], ContextLedger],
        stamps: Callable[[], int],
    ) -> None:
        self.shard_id = shard_id
        self._opener = opener
        self._stamps = stamps
        self._lock = threading.Lock()
        self._asked = threading.Condition(self._lock)
        self._ledger: ContextLedger | None = None
        self.failure: BaseException | None = None
        """What made the last open or read fail (None once one succeeds)."""
        self._failed_at = 0.0
        self.reaches = 0
        """Successful reaches (``ask_reach``) so far."""
        self.reached_head: int | None = None
        self._windows: deque[_Window] = deque(maxlen=WINDOWS_KEPT)
        self._copies: OrderedDict[Copy, tuple[int | None, int]] = OrderedDict()
        self._asks = _Asks({}, set(), False, set())
        self._thread: threading.Thread | None = None

    # What feeds read without waiting.

    def hub(self) -> FeedHub | None:
        """The shard's feed reader, once its ledger is open and no read failed."""
        with self._lock:
            ledger, failed = self._ledger, self.failure is not None
        return None if ledger is None or failed else ledger._feeds

    def window(self, position: int, newer_than: int) -> MovesAround | None:
        """The moves around ``position`` as read after stamp ``newer_than``."""
        with self._lock:
            for window in reversed(self._windows):
                fresh = window.stamp > newer_than
                if fresh and window.first <= position <= window.last:
                    return window.moves
        return None

    def copy_at(self, stream: UUID, version: int, newer_than: int) -> int | None:
        """The position of the copy of the event here, None if there is none,
        UNKNOWN if it was not read after ``newer_than`` (a copy, once there,
        stays: a position read at any time counts)."""
        with self._lock:
            found = self._copies.get((stream, version))
        if found is None or (found[0] is None and found[1] <= newer_than):
            return UNKNOWN
        return found[0]

    # What feeds ask for; ``wake`` is called once it is answered or failed.

    def ask_window(self, position: int, settled: int, wake: Wake) -> None:
        """Reads the moves from ``position`` on (up to ``settled``, a position
        the shard's log holds every event through)."""
        self._ask(wake, lambda asks: asks.windows.__setitem__(position, settled))

    def ask_copy(self, stream: UUID, version: int, wake: Wake) -> None:
        self._ask(wake, lambda asks: asks.copies.add((stream, version)))

    def ask_reach(self, wake: Wake) -> None:
        """Opens the shard's ledger and reads its head (``reached_head``)."""
        self._ask(wake, lambda asks: setattr(asks, "reach", True))

    def open_now(self) -> ContextLedger:
        """The shard's ledger, opened here if need be (StorageUnavailable if it
        cannot be)."""
        try:
            return self._opened()
        except Exception as error:
            with self._lock:
                self.failure, self._failed_at = error, time.monotonic()
            raise

    def _ask(self, wake: Wake, add: Callable[[_Asks], None]) -> None:
        with self._lock:
            add(self._asks)
            self._asks.woken.add(wake)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run,
                    name=f"ctxledger-shard-{self.shard_id}",
                    daemon=True,
                )
                self._thread.start()
            self._asked.notify_all()

    # The link's thread.

    def _run(self) -> None:
        while True:
            asks = self._next_asks()
            if asks is None:
                return
            stamp = self._stamps()
            try:
                self._answer(asks, stamp)
            except Exception as error:  # noqa: BLE001  (told to the feeds that asked)
                with self._lock:
                    self.failure, self._failed_at = error, time.monotonic()
            else:
                with self._lock:
                    self.failure = None
            for wake in asks.woken:
                wake()

    def _next_asks(self) -> _Asks | None:
        """Waits for asks (None when there were none for IDLE_SECONDS), and after
        a failure for RETRY_SECONDS."""
        idle_until = time.monotonic() + IDLE_SECONDS
        with self._lock:
            while True:
                now = time.monotonic()
                asks = self._asks
                if not (asks.windows or asks.copies or asks.reach or asks.woken):
                    if now >= idle_until:
                        self._thread = None
                        return None
                    self._asked.wait(idle_until - now)
                    continue
                retry_at = self._failed_at + RETRY_SECONDS
                if self.failure is not None and now < retry_at:
                    self._asked.wait(retry_at - now)
                    continue
                self._asks = _Asks({}, set(), False, set())
                return asks

    def _answer(self, asks: _Asks, stamp: int) -> None:
        ledger = self._opened()
        if asks.reach:
            head = ledger._feeds.fresh_head()
            with self._lock:
                self.reached_head = head
                self.reaches += 1
        if not (asks.windows or asks.copies):
            return
        schema = ledger.storage.settings["POSTGRES_SCHEMA"]
        with self._cursor(ledger) as cursor:
            windows = [
                _Window(first, last, stamp, moves_around(cursor, schema, first, last))
                for first, last in _spans(asks.windows)
            ]
            copies = {
                (stream, version): copy_position(cursor, schema, stream, version)
                for stream, version in asks.copies
            }
        self._keep(windows, copies, stamp)

    def _keep(
        self, windows: list[_Window], copies: dict[Copy, int | None], stamp: int
    ) -> None:
        with self._lock:
            self._windows.extend(windows)
            for key, position in copies.items():
                self._copies[key] = (position, stamp)
                self._copies.move_to_end(key)
            while len(self._copies) > COPIES_KEPT:
                self._copies.popitem(last=False)

    def _opened(self) -> ContextLedger:
        with self._lock:
            ledger = self._ledger
        if ledger is None:
            ledger = self._opener()
            with self._lock:
                self._ledger = ledger
        return ledger

    @contextmanager
    def _cursor(self, ledger: ContextLedger) -> Iterator[Any]:
        """A read-only transaction on the shard's log reader (never a connection
        that commands need)."""
        hub = ledger._feeds
        with storage_failures(ledger.storage), hub.reading() as open_:
            if not open_:
                raise LedgerClosed
            datastore: Any = getattr(hub.recorder, "datastore")  # noqa: B009
            with datastore.transaction(commit=False) as cursor:
                yield cursor


def _spans(asked: dict[int, int]) -> list[tuple[int, int]]:
    """The windows to read for the positions asked: each from a position to its
    settled bound (at most WINDOW_SPAN on), one per run of positions it covers."""
    spans: list[tuple[int, int]] = []
    for position in sorted(asked):
        if spans and position <= spans[-1][1]:
            continue
        spans.append(
            (position, max(position, min(asked[position], position + WINDOW_SPAN)))
        )
    return spans
