"""One reader of the log per ledger, fanned out to every feed in memory: feeds
share it, a slow consumer catches up alone, and readers waiting at the safe head
never hold a connection or a thread that commands need."""

import asyncio
import threading
from collections.abc import Iterator

import psycopg
import pytest
from prometheus_client import REGISTRY

from ledger import (
    AsyncContextLedger,
    ChangeFeed,
    ContextLedger,
    InvalidContextInput,
    LedgerConfigError,
    LedgerCorrupted,
    LedgerEvent,
)
from ledger._domain.contexts import user_aggregate_id
from ledger._store import feed as feed_module
from tests.helpers import dsn_and_schema, wait_until
from tests.tampering import execute_sql

Change = tuple[int, LedgerEvent]
HOLD_LIMIT_SECONDS = 20


def _feed_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ctxledger-feeds"]


def _ledger_threads() -> int:
    """The threads that read for feeds (the command pool grows on its own)."""
    return sum(t.name.startswith("ctxledger-feed") for t in threading.enumerate())


def _take(feed: ChangeFeed, count: int) -> list[Change]:
    taken: list[Change] = []
    for change in feed:
        taken.append(change)
        if len(taken) == count:
            break
    return taken


@pytest.fixture
def ledger(durable_url: str) -> Iterator[ContextLedger]:
    with ContextLedger.open(durable_url) as opened:
        yield opened


def test_many_feeds_share_one_reader_and_each_gets_only_its_users_events(
    ledger: ContextLedger,
) -> None:
    idle = [ledger.changes(f"idle-{n}") for n in range(200)]
    alice, everyone = ledger.changes("alice"), ledger.changes()

    for n in range(3):
        ledger.open_context("alice", f"t{n}")
        ledger.open_context("bob", f"t{n}")
    alices = _take(alice, 3)
    all_of_them = _take(everyone, 6)

    assert len(_feed_threads()) == 1
    assert [(e.user_id, e.thread_id) for _, e in alices] == [
        ("alice", "t0"),
        ("alice", "t1"),
        ("alice", "t2"),
    ]
    assert [p for p, _ in all_of_them] == sorted(p for p, _ in all_of_them)
    assert {e.user_id for _, e in all_of_them} == {"alice", "bob"}
    assert all(feed.poll() == [] for feed in idle)
    assert all(feed.position >= all_of_them[-1][0] for feed in idle)


def test_a_consumer_that_falls_behind_catches_up_alone_and_misses_nothing(
    ledger: ContextLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed_module, "FEED_BUFFER", 5)
    with ledger.changes() as slow, ledger.changes() as fast:
        for n in range(40):
            ledger.open_context(f"user-{n % 7}", f"t{n}")
        promptly = _take(fast, 40)
        behind = not slow.live
        late = _take(slow, 40)

    assert behind
    assert late == promptly
    assert [p for p, _ in late] == sorted({p for p, _ in late})


def test_a_users_feed_that_falls_behind_resumes_from_that_users_stream(
    ledger: ContextLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed_module, "FEED_BUFFER", 3)
    with ledger.changes("carol") as slow, ledger.changes() as everyone:
        for n in range(12):
            ledger.open_context("carol", f"t{n % 5}")
            ledger.open_context("dave", f"t{n % 5}")
        stored = _take(everyone, 24)
        late = _take(slow, 12)

    assert late == [(p, e) for p, e in stored if e.user_id == "carol"]


def test_a_feed_that_starts_behind_joins_the_shared_reader_once_level(
    ledger: ContextLedger,
) -> None:
    for n in range(30):
        ledger.open_context(f"user-{n % 4}", f"t{n}")
    with ledger.changes() as now:
        from_start = ledger.changes(after=0)
        caught_up = _take(from_start, 30)
        ledger.open_context("user-9", "later")
        live_one = _take(from_start, 1)
        seen_now = _take(now, 1)

    assert len({p for p, _ in caught_up}) == 30
    assert from_start.live
    assert live_one == seen_now
    from_start.close()


def test_async_idle_feeds_wait_without_threads_and_the_writers_feed_gets_its_events(
    durable_url: str,
) -> None:
    async def scenario() -> tuple[list[tuple[int | str, LedgerEvent]], int, int]:
        async with AsyncContextLedger.open(durable_url, max_threads=2) as ledger:
            await asyncio.gather(  # the command threads exist from here on
                ledger.open_context("warm-1", "t"), ledger.open_context("warm-2", "t")
            )
            async with ledger.changes("erin") as erin:
                threads_before = _ledger_threads()
                idle = [ledger.changes(f"idle-{n}") for n in range(300)]
                for feed in idle:
                    await feed.start()
                waiting = [asyncio.create_task(anext(feed)) for feed in idle]
                for n in range(5):
                    await ledger.open_context("erin", f"t{n}")
                got = [await asyncio.wait_for(anext(erin), 30) for _ in range(5)]
                threads_after = _ledger_threads()
            still_waiting = sum(not task.done() for task in waiting)
            for task in waiting:
                task.cancel()
            for feed in idle:
                await feed.aclose()
            return got, still_waiting, threads_after - threads_before

    got, still_waiting, more_threads = asyncio.run(scenario())

    assert [e.thread_id for _, e in got] == [f"t{n}" for n in range(5)]
    assert still_waiting == 300
    assert more_threads == 0


@pytest.mark.postgres
def test_feeds_waiting_at_the_safe_head_do_not_hold_back_another_users_writes(
    postgres_url: str,
) -> None:
    url = f"{postgres_url}&pool_size=1&max_overflow=0"
    with ContextLedger.open(url) as ledger:
        ledger.open_context("amy", "t")
        dsn, _ = dsn_and_schema(postgres_url)
        with psycopg.connect(dsn, application_name="ctxledger-test-holder") as holder:
            holder.execute("SELECT pg_current_xact_id()")
            feeds: list[ChangeFeed] = []
            starting = [
                threading.Thread(target=lambda: feeds.append(ledger.changes()))
                for _ in range(16)
            ]
            for thread in starting:
                thread.start()
            written = threading.Thread(target=ledger.open_context, args=("ben", "t"))
            written.start()
            written.join(HOLD_LIMIT_SECONDS)
            wrote_while_held = not written.is_alive()
            started_while_held = len(feeds)
            holder.rollback()
        for thread in starting:
            thread.join(HOLD_LIMIT_SECONDS)
        for feed in feeds:
            feed.close()

    assert wrote_while_held
    assert started_while_held == 0  # they did wait for the safe head
    assert len(feeds) == 16


@pytest.mark.postgres
def test_async_feed_starts_waiting_at_the_safe_head_leave_the_command_threads_free(
    postgres_url: str,
) -> None:
    url = f"{postgres_url}&pool_size=1&max_overflow=0"

    async def scenario() -> tuple[bool, int]:
        async with AsyncContextLedger.open(url, max_threads=2) as ledger:
            await ledger.open_context("amy", "t")
            dsn, _ = dsn_and_schema(postgres_url)
            holder = await psycopg.AsyncConnection.connect(
                dsn, application_name="ctxledger-test-holder"
            )
            try:
                await holder.execute("SELECT pg_current_xact_id()")
                feeds = [ledger.changes() for _ in range(8)]
                starts = [asyncio.create_task(feed.start()) for feed in feeds]
                await asyncio.sleep(0.2)
                await asyncio.wait_for(
                    ledger.open_context("ben", "t"), HOLD_LIMIT_SECONDS
                )
                wrote_while_held = not any(start.done() for start in starts)
            finally:
                await holder.rollback()
                await holder.close()
            await asyncio.wait_for(asyncio.gather(*starts), HOLD_LIMIT_SECONDS)
            for feed in feeds:
                await feed.aclose()
            return wrote_while_held, len(starts)

    wrote_while_held, started = asyncio.run(scenario())

    assert wrote_while_held
    assert started == 8


@pytest.mark.postgres
def test_the_feeds_reader_uses_connections_of_its_own(
    postgres_url: str, application_name: str
) -> None:
    with (
        ContextLedger.open(f"{postgres_url}&pool_size=1&max_overflow=0") as ledger,
        ledger.changes(),
    ):
        ledger.open_context("amy", "t")

        def connections() -> int:
            dsn, _ = dsn_and_schema(postgres_url)
            with psycopg.connect(dsn, autocommit=True) as probe:
                row = probe.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                    (application_name,),
                ).fetchone()
            return 0 if row is None else int(row[0])

        wait_until(lambda: connections() >= 2, "the reader's connection")
        ledger.open_context("ben", "t")  # the pool of one is free for commands
        found = connections()

    assert found >= 2  # the command pool holds one: the others are the readers


def _sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def test_open_feeds_and_feeds_that_fell_behind_are_counted(
    ledger_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed_module, "FEED_BUFFER", 2)
    open_before = _sample("ctxledger_feeds_open")
    behind_before = _sample("ctxledger_feeds_fell_behind_total")
    with ContextLedger.open(ledger_url) as ledger:
        slow, other, closed = ledger.changes(), ledger.changes("x"), ledger.changes()
        closed.close()
        while_open = _sample("ctxledger_feeds_open") - open_before
        for n in range(5):
            ledger.open_context("amy", f"t{n}")
        _take(slow, 5)
        behind = _sample("ctxledger_feeds_fell_behind_total") - behind_before
        other.close()
    after_close = _sample("ctxledger_feeds_open") - open_before

    assert while_open == 2
    assert behind == 1
    assert after_close == 0


def test_a_feed_closed_while_it_catches_up_never_joins_the_reader_again(
    ledger: ContextLedger,
) -> None:
    for n in range(5):
        ledger.open_context("amy", f"t{n}")
    behind = ledger.changes("amy", after=0)
    behind.close()  # as a socket leaves while its reader thread reads a page

    behind.catch_up()
    behind.catch_up()
    ledger.open_context("amy", "later")
    with ledger.changes() as everyone:
        ledger.open_context("amy", "latest")
        _take(everyone, 1)

    assert not behind.live
    assert behind.take() is not None  # what it had read stays, nothing more joins


def test_a_consumer_that_only_polls_joins_the_shared_reader_once_level(
    ledger: ContextLedger,
) -> None:
    for n in range(5):
        ledger.open_context("amy", f"t{n}")
    with ledger.changes(after=0) as feed:
        first = feed.poll()
        again = feed.poll()

        assert len(first) == 5
        assert again == []
        assert feed.live


def test_a_start_beyond_the_logs_head_is_refused(ledger: ContextLedger) -> None:
    ledger.open_context("amy", "t")
    head = ledger.chain_size()

    with pytest.raises(InvalidContextInput, match="beyond the log's last position"):
        ledger.changes("amy", after=head + 1)
    with ledger.changes("amy", after=head) as at_head:
        assert at_head.poll() == []


def test_an_async_start_beyond_the_logs_head_is_refused(durable_url: str) -> None:
    async def scenario() -> str:
        async with AsyncContextLedger.open(durable_url) as ledger:
            await ledger.open_context("amy", "t")
            head = await ledger.chain_size()
            try:
                await ledger.changes("amy", after=head + 10**9).start()
            except InvalidContextInput as refused:
                return str(refused)
            return "started"

    assert "beyond the log's last position" in asyncio.run(scenario())


@pytest.mark.parametrize("damage", [bytes(60), b"\x01"], ids=["zeroed", "too-short"])
def test_one_users_damaged_key_row_stops_only_that_users_feed(
    durable_url: str, damage: bytes
) -> None:
    url = durable_url
    master_key = "00" * 32
    with (
        ContextLedger.open(url, master_key=master_key) as writer,
        ContextLedger.open(url, master_key=master_key) as reader,
    ):
        writer.open_context("mallory", "t", metadata={"a": 1})
        writer.open_context("alice", "t", metadata={"a": 1})
        alice, mallory, everyone = (
            reader.changes("alice"),
            reader.changes("mallory"),
            reader.changes(),
        )
        execute_sql(
            url,
            "UPDATE ctxledger_keys SET data_key = {p} WHERE stream_id = {p}",
            (damage, user_aggregate_id("mallory").hex),
        )
        writer.open_context("mallory", "t2", metadata={"b": 2})  # its key cached
        writer.open_context("alice", "t3", metadata={"c": 3})
        alices = _take(alice, 1)
        with pytest.raises(LedgerCorrupted, match="mallory"):
            next(mallory)
        with pytest.raises(LedgerCorrupted):
            next(everyone)
        after_damage = next(everyone)

    assert [(e.user_id, e.thread_id) for _, e in alices] == [("alice", "t3")]
    assert (after_damage[1].user_id, after_damage[1].thread_id) == ("alice", "t3")


@pytest.mark.postgres
def test_the_feed_looks_keys_up_without_a_connection_that_commands_need(
    postgres_url: str,
) -> None:
    url = f"{postgres_url}&pool_size=1&max_overflow=0"
    with (
        ContextLedger.open(url, master_key="11" * 32) as writer,
        ContextLedger.open(url, master_key="11" * 32) as reader,
        reader.changes("amy") as feed,
    ):
        held = threading.Event()
        release = threading.Event()

        def hold_the_commands_connection() -> None:
            with reader._app.recorder.datastore.get_connection():  # type: ignore[attr-defined]
                held.set()
                release.wait(30)

        holder = threading.Thread(target=hold_the_commands_connection)
        holder.start()
        held.wait(30)
        try:
            writer.open_context("amy", "t", metadata={"x": 1})
            got = _take(feed, 1)
        finally:
            release.set()
            holder.join(30)

    assert got[0][1].details["metadata"] == {"x": 1}


def test_a_feed_without_the_master_key_that_now_wraps_the_keys_says_so(
    durable_url: str,
) -> None:
    url = durable_url
    with ContextLedger.open(url) as keyless:  # opened before keys were wrapped
        keyless.open_context("amy", "t", metadata={"a": 1})
        feed = keyless.changes()
        with ContextLedger.open(url, master_key="22" * 32) as keyed:
            keyed.open_context("bob", "t", metadata={"b": 1})
        for _ in range(2):  # a setting to fix, not an event passed over
            with pytest.raises(LedgerConfigError, match="wrapped by a master key"):
                feed.poll()
        feed.close()
