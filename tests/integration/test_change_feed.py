"""The change feed: every event stored by any process, in log order, each once,
from a position or from the head; one user's only when asked; it waits for an
event that commits late instead of passing it; close() ends it."""

import asyncio
import multiprocessing
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from ledger import (
    AsyncContextLedger,
    ChangeFeed,
    ContextLedger,
    InvalidContextInput,
    LedgerClosed,
    LedgerEvent,
    StorageUnavailable,
)
from tests.helpers import CuttingProxy, appends_held, held_backend

Change = tuple[int, LedgerEvent]
AsyncChange = tuple[int | str, LedgerEvent]  # text on a sharded ledger


def _write(url: str, prefix: str, count: int) -> None:
    with ContextLedger.open(url) as ledger:
        for n in range(count):
            ledger.open_context(f"{prefix}-{n % 3}", f"t{n % 2}")


class _Collector(threading.Thread):
    """Reads a feed in a thread until it ends."""

    def __init__(self, feed: ChangeFeed) -> None:
        super().__init__(daemon=True)
        self.feed = feed
        self.changes: list[Change] = []

    def run(self) -> None:
        for change in self.feed:
            self.changes.append(change)

    def wait_for(self, count: int, seconds: float = 30) -> list[Change]:
        deadline = time.monotonic() + seconds
        while len(self.changes) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.changes)


@pytest.fixture
def ledger(durable_url: str) -> Iterator[ContextLedger]:
    with ContextLedger.open(durable_url) as opened:
        yield opened


def test_a_feed_gives_every_event_of_other_processes_in_log_order_once(
    durable_url: str, ledger: ContextLedger
) -> None:
    ledger.open_context("before", "t")  # before the feed: not in it
    with ledger.changes() as feed:
        reader = _Collector(feed)
        reader.start()
        writers = [
            multiprocessing.get_context("spawn").Process(
                target=_write, args=(durable_url, f"p{i}", 30)
            )
            for i in range(3)
        ]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(60)
        seen = reader.wait_for(90)
    reader.join(5)

    assert not reader.is_alive()  # close() ended the iteration
    positions = [position for position, _ in seen]
    assert positions == sorted(set(positions))
    assert len(seen) == 90
    stored = [
        (event.user_id, event.version)
        for user in {event.user_id for _, event in seen}
        for event in ledger.history(user)
    ]
    assert sorted((e.user_id, e.version) for _, e in seen) == sorted(stored)


def test_a_users_feed_gives_only_that_users_events(ledger: ContextLedger) -> None:
    with ledger.changes("alice") as feed:
        for n in range(5):
            ledger.open_context("alice", f"t{n}")
            ledger.open_context("bob", f"t{n}")
        ledger.clear_user("alice")
        reader = _Collector(feed)
        reader.start()
        seen = reader.wait_for(10)

    assert [event.kind for _, event in seen] == ["created"] * 5 + ["cleared"] * 5
    assert {event.user_id for _, event in seen} == {"alice"}
    assert [e.version for _, e in seen] == list(range(1, 11))


def test_a_feed_starts_after_a_given_position(ledger: ContextLedger) -> None:
    for n in range(6):
        ledger.open_context("alice", f"t{n}")
    all_of_it = ledger.changes(after=0).poll()
    middle = all_of_it[2][0]

    rest = ledger.changes(after=middle).poll()
    alices = ledger.changes("alice", after=middle).poll()

    assert [p for p, _ in rest] == [p for p, _ in all_of_it[3:]]
    assert [p for p, _ in alices] == [p for p, _ in all_of_it[3:]]
    assert [e.version for _, e in rest] == [4, 5, 6]


def test_close_ends_a_waiting_feed(ledger: ContextLedger) -> None:
    feed = ledger.changes()
    reader = _Collector(feed)
    reader.start()
    time.sleep(0.2)

    feed.close()
    reader.join(2)

    assert not reader.is_alive()
    assert reader.changes == []


@pytest.mark.parametrize("after", [-1, True, "0:1", " 0", 1.5])
def test_a_bad_position_or_user_is_refused(ledger: ContextLedger, after: Any) -> None:
    with pytest.raises(InvalidContextInput):
        ledger.changes(after=after)
    with pytest.raises(InvalidContextInput):
        ledger.changes("none")


@pytest.mark.postgres
def test_a_feed_waits_for_an_event_that_commits_late(
    postgres_url: str, application_name: str
) -> None:
    with (
        ContextLedger.open(postgres_url) as writer,
        ContextLedger.open(postgres_url) as reader,
    ):
        writer.open_context("zed", "t0")
        with reader.changes() as feed:
            collector = _Collector(feed)
            collector.start()
            with appends_held(postgres_url, "zed"):
                held = threading.Thread(
                    target=lambda: writer.open_context("zed", "late"), daemon=True
                )
                held.start()
                held_backend(postgres_url, application_name)
                writer.open_context("amy", "early")  # a later position, committed
                time.sleep(0.5)
                before_release = list(collector.changes)
            held.join(30)
            seen = collector.wait_for(2)

    assert before_release == []  # it did not pass the held event
    assert [(e.user_id, e.thread_id) for _, e in seen] == [
        ("zed", "late"),
        ("amy", "early"),
    ]
    assert seen[0][0] < seen[1][0]


def test_the_async_feed_gives_a_users_events(durable_url: str) -> None:
    async def scenario() -> list[AsyncChange]:
        async with AsyncContextLedger.open(durable_url) as ledger:
            seen: list[AsyncChange] = []

            async def read() -> None:
                async for change in ledger.changes("alice"):
                    seen.append(change)
                    if len(seen) == 3:
                        return

            reading = asyncio.create_task(read())
            await asyncio.sleep(0.3)
            for n in range(3):
                await ledger.open_context("bob", f"t{n}")
                await ledger.open_context("alice", f"t{n}")
            await asyncio.wait_for(reading, 30)
            return seen

    seen = asyncio.run(scenario())

    assert [(e.user_id, e.thread_id) for _, e in seen] == [
        ("alice", "t0"),
        ("alice", "t1"),
        ("alice", "t2"),
    ]


def test_closing_the_ledger_ends_its_feeds(durable_url: str) -> None:
    ledger = ContextLedger.open(durable_url)
    reader = _Collector(ledger.changes())
    reader.start()
    time.sleep(0.2)

    ledger.close()
    reader.join(2)

    assert not reader.is_alive()

    async def closing_async() -> bool:
        ledger = AsyncContextLedger.open(durable_url)
        feed = ledger.changes()
        waiting = asyncio.create_task(anext(feed, None))
        await asyncio.sleep(0.3)
        await ledger.aclose()
        return await asyncio.wait_for(waiting, 5) is None

    assert asyncio.run(closing_async())


def test_an_async_feed_whose_reads_are_cancelled_loses_nothing(
    durable_url: str,
) -> None:
    async def scenario() -> list[int | str]:
        async with AsyncContextLedger.open(durable_url) as ledger:
            async with ledger.changes() as feed:
                for n in range(60):
                    await ledger.open_context(f"user-{n % 9}", f"t{n}")
                seen: list[int | str] = []
                deadline = time.monotonic() + 30
                while len(seen) < 60 and time.monotonic() < deadline:
                    try:  # a consumer that gives up on each wait very early
                        position, _ = await asyncio.wait_for(anext(feed), 0.002)
                        seen.append(position)
                    except TimeoutError:
                        continue
            return seen

    seen = asyncio.run(scenario())
    with ContextLedger.open(durable_url) as ledger:
        stored = [position for position, _ in ledger.changes(after=0).poll()]

    assert seen == stored[-60:]


@pytest.mark.postgres
def test_a_feed_raises_while_the_database_is_away_then_goes_on(
    postgres_url: str, postgres_dsn: str
) -> None:
    parts = urlsplit(postgres_dsn)
    proxy = CuttingProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    proxied = postgres_url.replace(
        f"@{urlsplit(postgres_url).netloc.split('@')[1]}", f"@127.0.0.1:{proxy.port}"
    )
    try:
        with (
            ContextLedger.open(postgres_url) as writer,
            ContextLedger.open(proxied) as reader,
            reader.changes() as feed,
        ):
            writer.open_context("alice", "before")
            first = next(feed)
            proxy.refuse = True
            proxy.cut_all()
            writer.open_context("alice", "during")
            failure = _first_failure(feed)
            proxy.refuse = False
            writer.open_context("alice", "after")
            rest: list[Change] = []
            deadline = time.monotonic() + 60
            while len(rest) < 2 and time.monotonic() < deadline:
                try:
                    rest.append(next(feed))
                except StorageUnavailable:
                    time.sleep(0.2)  # the pool reconnects
    finally:
        proxy.close()

    assert isinstance(failure, StorageUnavailable)
    assert [e.thread_id for _, e in [first, *rest]] == ["before", "during", "after"]


def _first_failure(feed: ChangeFeed, seconds: float = 30) -> BaseException | None:
    """What iterating the feed raises first (None: nothing within ``seconds``)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            next(feed)
        except StorageUnavailable as failure:
            return failure
    return None


CLOSE_RACE = """
import random, sys, threading, time
from ledger import ContextLedger, LedgerClosed
url = sys.argv[1]
with ContextLedger.open(url) as first:
    for n in range(2000):
        first.open_context(f"user-{n % 50}", f"t{n % 7}")

def read_feed(ledger):
    for _ in ledger.changes(after=0):
        pass

def call_api(ledger):
    try:
        while True:
            ledger.history(f"user-{random.randrange(50)}")
    except LedgerClosed:
        pass

for _ in range(40):
    ledger = ContextLedger.open(url)
    workers = [
        threading.Thread(target=work, args=(ledger,), daemon=True)
        for work in (read_feed, read_feed, read_feed, call_api, call_api)
    ]
    for worker in workers:
        worker.start()
    time.sleep(random.uniform(0, 0.05))
    ledger.close()
    for worker in workers:
        worker.join(10)
        assert not worker.is_alive()
print("ok")
"""


def test_closing_a_ledger_while_feeds_and_calls_read_is_clean(tmp_path: Path) -> None:
    # In a process of its own: closing SQLite under a running read crashed it.
    done = subprocess.run(
        [sys.executable, "-c", CLOSE_RACE, f"sqlite:///{tmp_path / 'race.db'}"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


def test_a_closed_ledger_refuses_calls_with_ledger_closed(ledger_url: str) -> None:
    ledger = ContextLedger.open(ledger_url)
    ledger.open_context("alice", "t")
    ledger.close()

    for call in (
        lambda: ledger.open_context("alice", "t"),
        lambda: ledger.history("alice"),
        ledger.changes,
    ):
        with pytest.raises(LedgerClosed):
            call()


def test_several_takers_of_one_async_feed_each_get_another_event(
    durable_url: str,
) -> None:
    async def scenario() -> list[int | str]:
        async with (
            AsyncContextLedger.open(durable_url) as ledger,
            ledger.changes() as feed,
        ):
            for n in range(10):
                await ledger.open_context(f"user-{n}", "t")
            taken = await asyncio.gather(*[anext(feed) for _ in range(10)])
        return [position for position, _ in taken]

    positions = asyncio.run(scenario())

    assert positions == sorted(set(positions))
    assert len(positions) == 10
