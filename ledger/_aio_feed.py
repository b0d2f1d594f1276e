"""``AsyncChangeFeed``: a ledger's change feed on the event loop."""

import asyncio
import functools
from collections.abc import Callable
from contextlib import suppress
from types import TracebackType
from typing import TYPE_CHECKING, Self

from ledger._api import ContextLedger
from ledger._domain.models import LedgerEvent
from ledger._feed_positions import Position, single_position
from ledger._sharded import ShardedLedger
from ledger._sharded_feed import ShardedChangeFeed, open_sharded_feed
from ledger._store.feed import ChangeFeed
from ledger._store.feed_items import beyond
from ledger.errors import LedgerClosed

if TYPE_CHECKING:
    from ledger._aio import AsyncContextLedger

AsyncChange = tuple[Position, LedgerEvent]
"""``(position, event)``: an int position on one database, text on a sharded
ledger (a position per shard)."""


class AsyncChangeFeed:
    """The change feed on the event loop. The ledger's one reader of the log
    (``FeedHub``) puts the feed's events in its queue and wakes it through the
    loop, so a waiting feed costs no thread, no connection and no wake-up until
    something arrives for it. A feed that is behind (started at an older
    position, or left more than FEED_BUFFER events untaken) reads the store by
    itself in the ledger's reader threads, never in the threads commands use.
    ``async with`` starts it (at the head, if ``after`` is None) and closes it;
    ``async for`` starts it if need be. On a sharded ledger it is a
    ``ShardedChangeFeed`` on the loop the same way: its shards' heads are
    awaited on the loop, and the moves it needs are read by the shards' links."""

    def __init__(
        self,
        ledger: "AsyncContextLedger",
        user_id: str | None,
        after: Position | None,
    ) -> None:
        self._ledger = ledger
        self._user_id = user_id
        self._after = after
        self._feed: ChangeFeed | ShardedChangeFeed | None = None
        self._arrived: asyncio.Future[None] | None = None  # what a wait awaits
        self._reading: asyncio.Future[bool] | None = None
        self._taking = asyncio.Lock()
        self._starting = asyncio.Lock()

    async def start(self) -> None:
        """Fixes where the feed starts (the head now, if ``after`` is None)."""
        async with self._starting:  # two starts at once make one feed
            if self._feed is None:
                await self._start()

    async def _start(self) -> None:
        ledger = await self._ledger.opened()
        if isinstance(ledger, ShardedLedger):
            self._feed = await self._start_sharded(ledger)
        else:
            self._feed = await self._start_single(ledger)

    async def _start_single(self, ledger: ContextLedger) -> ChangeFeed:
        after = None if self._after is None else single_position("after", self._after)
        if after is None:
            after = await _fresh_head(ledger)
        elif after > ledger._feeds.known_head():
            beyond(after, await _fresh_head(ledger))  # (then no I/O below)
        feed = ledger.changes(self._user_id, after=after)  # no I/O: ``after`` is known
        feed.set_waker(self._waker())
        return feed

    async def _start_sharded(self, ledger: ShardedLedger) -> ShardedChangeFeed:
        """Opens the shards (in a reader thread: rarely any I/O), then awaits the
        heads of the shards it starts at on the loop."""
        opening = functools.partial(
            open_sharded_feed, ledger, self._user_id, self._after
        )
        feed = await self._ledger.read(opening)
        try:
            feed.set_waker(self._waker())
            feed.ask_heads()
            while not feed.started:
                arrived = self._arrived_future()  # a wake from here on ends the wait
                if not feed.started:
                    await arrived
        except BaseException:
            feed.close()
            raise
        return feed

    def _waker(self) -> Callable[[], None]:
        loop = asyncio.get_running_loop()

        def wake() -> None:
            with suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(self._woken)

        return wake

    def _woken(self) -> None:
        arrived = self._arrived
        if arrived is not None and not arrived.done():
            arrived.set_result(None)

    def _arrived_future(self) -> "asyncio.Future[None]":
        if self._arrived is None or self._arrived.done():
            self._arrived = asyncio.get_running_loop().create_future()
        return self._arrived

    @property
    def position(self) -> Position | None:
        """The position through which the feed has read the log, taken or not
        (None before it starts); resume from the last event taken instead."""
        return None if self._feed is None else self._feed.position

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> AsyncChange:
        async with self._taking:  # one taker at a time, in the order they came
            return await self._next()

    async def _next(self) -> AsyncChange:
        try:
            await self.start()
        except LedgerClosed:
            raise StopAsyncIteration from None
        feed = self._feed
        assert feed is not None  # noqa: S101  (start() set it)
        while True:
            arrived = self._arrived_future()  # a wake from here on ends the wait
            change = feed.take()
            if change is not None:
                return change
            if feed.closed or self._ledger.closing:
                raise StopAsyncIteration
            if feed.live:
                await arrived  # until the feed's reader says something came
                continue
            # Behind the hub: read a page in a reader thread. Events are read into
            # the synchronous feed and taken from it here, so a read whose caller
            # was cancelled loses nothing: the next call waits for that read and
            # finds its events (or its error).
            if self._reading is None:
                self._reading = asyncio.ensure_future(self._ledger.read(feed.catch_up))
            await asyncio.wait([self._reading])  # a cancel here leaves it running
            reading, self._reading = self._reading, None
            try:
                progressed = reading.result()  # its error, raised once
            except LedgerClosed:
                raise StopAsyncIteration from None
            if not progressed:
                await arrived  # until the hub's head moves

    async def aclose(self) -> None:
        if self._feed is not None:
            self._feed.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


async def _fresh_head(ledger: ContextLedger) -> int:
    """The log's safe head read now by the ledger's feed reader, awaited on the
    loop: no thread of the pool waits for it."""
    loop = asyncio.get_running_loop()
    told: asyncio.Future[tuple[int | None, BaseException | None]] = loop.create_future()

    def settle(head: int | None, failure: BaseException | None) -> None:
        if not told.done():
            told.set_result((head, failure))

    def answer(head: int | None, failure: BaseException | None) -> None:
        with suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(settle, head, failure)

    hub = ledger._feeds
    hub.request_head(answer)
    head, failure = await told
    if failure is not None:
        hub.raise_failure(failure)  # a new error: the failure is shared
    if head is None:  # pragma: no cover  (a head or a failure is always told)
        raise LedgerClosed
    return head
