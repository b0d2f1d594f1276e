"""The asyncio change feed on a ledger over three shards: every shard's events,
each once, with a position per shard that resumes a feed; waiting feeds hold no
thread; a position the ledger never gave is refused when the feed starts."""

import asyncio
import threading
import time

import pytest

from ledger import AsyncChangeFeed, AsyncContextLedger, InvalidContextInput, LedgerEvent
from ledger._sharded import ShardedLedger

pytestmark = pytest.mark.postgres

Change = tuple[int | str, LedgerEvent]


async def _take(feed: AsyncChangeFeed, count: int, seconds: float = 30) -> list[Change]:
    taken: list[Change] = []
    deadline = time.monotonic() + seconds
    while len(taken) < count:
        left = deadline - time.monotonic()
        taken.append(await asyncio.wait_for(anext(feed), max(left, 0.01)))
    return taken


def test_the_async_feed_gives_every_shards_events_once(sharded_url: str) -> None:
    async def scenario() -> tuple[list[Change], set[int | None]]:
        async with (
            AsyncContextLedger.open(sharded_url) as ledger,
            ledger.changes() as feed,
        ):
            await asyncio.gather(
                *[ledger.open_context(f"user-{n % 12}", f"t{n}") for n in range(36)]
            )
            taken = await _take(feed, 36)
            sync = await ledger.opened()
            assert isinstance(sync, ShardedLedger)
            shards = {sync.shard_of(f"user-{n}") for n in range(12)}
            return taken, shards

    taken, shards = asyncio.run(scenario())

    assert shards == {0, 1, 2}
    assert all(isinstance(position, str) for position, _ in taken)
    versions = sorted((e.user_id, e.version) for _, e in taken)
    assert versions == sorted((f"user-{u}", v) for u in range(12) for v in (1, 2, 3))


def test_an_async_users_feed_resumes_from_the_last_position_it_gave(
    sharded_url: str,
) -> None:
    async def scenario() -> list[Change]:
        async with AsyncContextLedger.open(sharded_url) as ledger:
            async with ledger.changes("alice") as feed:
                for n in range(3):
                    await ledger.open_context("alice", f"t{n}")
                    await ledger.open_context("bob", f"t{n}")
                first = await _take(feed, 2)
            for n in range(3, 5):
                await ledger.open_context("alice", f"t{n}")
            async with ledger.changes("alice", after=first[-1][0]) as resumed:
                return first + await _take(resumed, 3)

    taken = asyncio.run(scenario())

    assert [e.version for _, e in taken] == [1, 2, 3, 4, 5]
    assert {e.user_id for _, e in taken} == {"alice"}


def test_idle_async_feeds_of_a_sharded_ledger_wait_without_threads(
    sharded_url: str,
) -> None:
    async def scenario() -> tuple[int, list[Change]]:
        async with AsyncContextLedger.open(sharded_url) as ledger:
            await ledger.open_context("warm", "t")
            idle = [ledger.changes(f"idle-{n}") for n in range(50)]
            for feed in idle:
                await feed.start()
            waiting = [asyncio.create_task(anext(feed)) for feed in idle]
            async with ledger.changes("erin") as erin:
                await asyncio.sleep(0.5)
                threads = threading.active_count()
                for n in range(3):
                    await ledger.open_context("erin", f"t{n}")
                got = await _take(erin, 3)
                more = threading.active_count() - threads
            for task in waiting:
                task.cancel()
            for feed in idle:
                await feed.aclose()
            return more, got

    more_threads, got = asyncio.run(scenario())

    assert [e.thread_id for _, e in got] == ["t0", "t1", "t2"]
    assert more_threads <= 3  # a moves reader per shard at most, not per feed


def test_an_async_start_from_a_position_the_ledger_never_gave_is_refused(
    sharded_url: str,
) -> None:
    async def scenario() -> None:
        async with AsyncContextLedger.open(sharded_url) as ledger:
            await ledger.changes(after="0:999999.1:0").start()

    with pytest.raises(InvalidContextInput, match="beyond"):
        asyncio.run(scenario())
