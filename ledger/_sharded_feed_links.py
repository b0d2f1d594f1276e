"""One shard as the sharded change feeds of a process see it.

A ``ShardLink`` holds the shard's ledger (opened on first use; its ``FeedHub``
reads the shard's log once for every feed of the process), whether the shard can
be reached, and what the feeds need to take each event once across shards: the
moves around its log (``shard_copies.moves_around``), the positions of copies
there (``shard_copies.copy_position``) and where copies end
(``ledger._sharded_feed_sql``). Feeds ask; the link's own thread reads, once for
every feed that asked meanwhile, keeps the answer for the feeds after them, and
wakes the askers. So a feed never queries the database for these, and an
asyncio feed never waits for them in a thread.

An answer carries the stamp of its read (``stamps()``, taken before the read): a
feed that needs an answer newer than something it did (took a copy, resumed from
a position) passes that stamp, and older answers do not count for it.
"""

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar
from uuid import UUID

from ledger import _sharded_feed_sql as reads
from ledger._api import ContextLedger
from ledger._sharded_feed_sql import Ends, Moving
from ledger._store.failures import storage_failures
from ledger._store.feed_hub import FeedHub
from ledger._store.shard_copies import MovesAround, copy_position, moves_around
from ledger.errors import LedgerClosed

WINDOW_SPAN = 2000
"""Positions of a shard's log one read of its moves covers at most."""
WINDOWS_KEPT = 8
KEPT = 10_000
"""Answers of each kind a link keeps."""
RETRY_SECONDS = 1.0
"""How long a link that failed waits before it reads the shard again."""
IDLE_SECONDS = 1.0

Wake = Callable[[], None]
Copy = tuple[UUID, int]
Ahead = tuple[int, int]  # (from shard, after position)
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
    windows: dict[int, int] = field(default_factory=dict)  # position -> settled
    copies: set[Copy] = field(default_factory=set)
    ends: set[Copy] = field(default_factory=set)  # (stream, from shard)
    ahead: set[Ahead] = field(default_factory=set)
    moving: bool = False
    reach: bool = False
    woken: set[Wake] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(
            self.windows
            or self.copies
            or self.ends
            or self.ahead
            or self.moving
            or self.reach
        )


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
        self._ends: OrderedDict[Copy, Ends] = OrderedDict()
        self._ahead: OrderedDict[Ahead, tuple[int, dict[UUID, Ends]]] = OrderedDict()
        self._moving: tuple[int, Moving] | None = None
        self._departures: list[UUID] = []
        self._departed: set[UUID] = set()
        self._asks = _Asks()
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

    def copies_end(self, stream: UUID, from_shard: int) -> Ends | None:
        """Where the copies here of ``stream`` from ``from_shard`` end, once read
        and made."""
        with self._lock:
            return self._ends.get((stream, from_shard))

    def copies_after(
        self, from_shard: int, after: int, *, newer_than: int
    ) -> dict[UUID, Ends] | None:
        """The streams with copies here from ``from_shard`` past ``after``, as
        read after stamp ``newer_than``."""
        with self._lock:
            found = self._ahead.get((from_shard, after))
        return None if found is None or found[0] <= newer_than else found[1]

    def moving(self, newer_than: int) -> tuple[int, Moving] | None:
        """The users being moved and the stamp of that read, if read after
        ``newer_than`` (shard 0 only: the directory's database)."""
        with self._lock:
            moving = self._moving
        return None if moving is None or moving[0] <= newer_than else moving

    def departures(self, since: int = 0) -> list[UUID]:
        """The streams that moved off this shard, in the order this process first
        read them gone (again, after one came back and left again)."""
        with self._lock:
            return self._departures[since:]

    # What feeds ask for; ``wake`` is called once it is answered or failed.

    def ask_window(self, position: int, settled: int, wake: Wake) -> None:
        """Reads the moves from ``position`` on (up to ``settled``, a position
        the shard's log holds every event through)."""
        self._ask(wake, lambda asks: asks.windows.__setitem__(position, settled))

    def ask_copy(self, stream: UUID, version: int, wake: Wake) -> None:
        self._ask(wake, lambda asks: asks.copies.add((stream, version)))

    def ask_copies_end(self, stream: UUID, from_shard: int, wake: Wake) -> None:
        self._ask(wake, lambda asks: asks.ends.add((stream, from_shard)))

    def ask_copies_after(self, from_shard: int, after: int, wake: Wake) -> None:
        self._ask(wake, lambda asks: asks.ahead.add((from_shard, after)))

    def ask_moving(self, wake: Wake) -> None:
        self._ask(wake, lambda asks: setattr(asks, "moving", True))

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
                if not asks and not asks.woken:
                    if now >= idle_until:
                        self._thread = None
                        return None
                    self._asked.wait(idle_until - now)
                    continue
                retry_at = self._failed_at + RETRY_SECONDS
                if self.failure is not None and now < retry_at:
                    self._asked.wait(retry_at - now)
                    continue
                self._asks = _Asks()
                return asks

    def _answer(self, asks: _Asks, stamp: int) -> None:
        ledger = self._opened()
        if asks.reach:
            head = ledger._feeds.fresh_head()
            with self._lock:
                self.reached_head = head
                self.reaches += 1
        if not asks:
            return
        schema = ledger.storage.settings["POSTGRES_SCHEMA"]
        with self._cursor(ledger) as cursor:
            moving = reads.moving(cursor, schema) if asks.moving else None
            windows = [
                _Window(first, last, stamp, moves_around(cursor, schema, first, last))
                for first, last in reads.spans(asks.windows, WINDOW_SPAN)
            ]
            copies = {key: copy_position(cursor, schema, *key) for key in asks.copies}
            ends = {key: reads.copies_end(cursor, schema, *key) for key in asks.ends}
            ahead = {
                key: reads.copies_after(cursor, schema, *key) for key in asks.ahead
            }
        with self._lock:
            self._keep(windows, copies, stamp)
            _kept(self._ends, {k: e for k, e in ends.items() if e is not None})
            _kept(self._ahead, {k: (stamp, a) for k, a in ahead.items()})
            if moving is not None:  # stamped once read: later reads pass it
                self._moving = (self._stamps(), moving)

    def _keep(
        self, windows: list[_Window], copies: dict[Copy, int | None], stamp: int
    ) -> None:
        """Keeps what was read (under ``_lock``); notes the streams newly gone."""
        self._windows.extend(windows)
        _kept(self._copies, {k: (p, stamp) for k, p in copies.items()})
        if windows:
            departed = windows[-1].moves.departed
            self._departures += [s for s in departed if s not in self._departed]
            self._departed = set(departed)

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


K = TypeVar("K")
V = TypeVar("V")


def _kept(kept: "OrderedDict[K, V]", new: dict[K, V]) -> None:
    for key, value in new.items():
        kept[key] = value
        kept.move_to_end(key)
    while len(kept) > KEPT:
        kept.popitem(last=False)
