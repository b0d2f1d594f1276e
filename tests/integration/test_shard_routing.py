"""Routing users over three PostgreSQL shards: every process agrees on a user's
shard, before and after restarts; adding a shard moves nobody; a drained shard
takes no new users; a process that opened the ledger before the directory existed
cannot place a new user on shard 0; directory reads are cached."""

import json
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID, uuid4

import psycopg
import pytest

from ledger import ContextLedger, LedgerError
from ledger._domain.contexts import user_aggregate_id
from ledger._shard_admin import add_shard, drain_shard
from ledger._sharded import ShardedLedger
from tests.shard_sql import shard_sql

pytestmark = pytest.mark.postgres

PROCESSES = 4
USERS = 24

# Each process opens the ledger, waits for the go file so that all write at once,
# writes every user (each starting at another user), then prints its routes.
WRITER = """
import json, os, sys, time
from ledger import ContextLedger
url, go, users, tag = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
names = [f"user-{(n + tag * 5) % users}" for n in range(users)]
with ContextLedger.open(url) as ledger:
    while not os.path.exists(go):
        time.sleep(0.005)
    for name in names:
        ledger.open_context(name, f"thread-{tag}")
    print(json.dumps({name: ledger.shard_of(name) for name in names}))
"""


def _stored_streams(url: str) -> dict[UUID, int]:
    """Events per stream in the shard database at ``url`` (raw SQL)."""
    rows = shard_sql(
        url,
        "SELECT originator_id, count(*) FROM ctxledger_events GROUP BY originator_id",
    )
    return {UUID(str(stream)): int(count) for stream, count in rows}


def _holders(shard_urls: list[str]) -> dict[UUID, dict[int, int]]:
    """For each stream, the shards holding its events and how many."""
    found: dict[UUID, dict[int, int]] = defaultdict(dict)
    for shard_id, url in enumerate(shard_urls):
        for stream, count in _stored_streams(url).items():
            found[stream][shard_id] = count
    return found


def _routes(url: str, users: list[str]) -> dict[str, int | None]:
    with ContextLedger.open(url) as ledger:
        assert isinstance(ledger, ShardedLedger)
        return {user: ledger.shard_of(user) for user in users}


def _write(url: str, users: list[str], thread: str = "t") -> dict[str, int | None]:
    with ContextLedger.open(url) as ledger:
        for user in users:
            ledger.open_context(user, thread)
    return _routes(url, users)


def _run_writers(url: str, tmp_path: Path) -> list[dict[str, int]]:
    go = tmp_path / "go"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, url, str(go), str(USERS), str(tag)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in range(PROCESSES)
    ]
    go.touch()
    routes = []
    for writer in writers:
        out, err = writer.communicate(timeout=120)
        assert writer.returncode == 0, err
        routes.append(json.loads(out))
    return routes


@pytest.fixture
def fourth_database(postgres_dsn: str) -> Iterator[str]:
    """One more fresh database (for a shard added later), dropped afterwards."""
    base, _, _ = postgres_dsn.rpartition("/")
    name = f"ctxl_shard_{uuid4().hex[:10]}_extra"
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    yield f"{base}/{name}?schema=ctxl"
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_processes_writing_the_same_new_users_agree_on_each_users_shard(
    sharded_url: str, shard_urls: list[str], tmp_path: Path
) -> None:
    routes = _run_writers(sharded_url, tmp_path)

    assert all(route == routes[0] for route in routes[1:])
    assert set(routes[0].values()) == {0, 1, 2}


def test_each_users_events_are_on_exactly_the_shard_every_process_names(
    sharded_url: str, shard_urls: list[str], tmp_path: Path
) -> None:
    routes = _run_writers(sharded_url, tmp_path)[0]

    holders = _holders(shard_urls)
    assert {user: holders[user_aggregate_id(user)] for user in routes} == {
        user: {shard: PROCESSES} for user, shard in routes.items()
    }


def test_a_reopened_ledger_routes_every_user_as_before(
    sharded_url: str, tmp_path: Path
) -> None:
    before = _run_writers(sharded_url, tmp_path)[0]

    after = _routes(sharded_url, list(before))
    with ContextLedger.open(sharded_url) as ledger:
        readable = {user: ledger.get_context(user, "thread-0") for user in before}

    assert after == before
    assert all(context is not None for context in readable.values())


def test_adding_a_shard_moves_no_existing_user(
    sharded_url: str, shard_urls: list[str], fourth_database: str
) -> None:
    users = [f"early-{n}" for n in range(30)]
    before = _write(sharded_url, users)
    stored_before = _holders(shard_urls)

    added = add_shard(sharded_url, fourth_database)
    after = _routes(sharded_url, users)
    _write(sharded_url, users, thread="after-the-add")

    assert added.shard_id == 3
    assert after == before
    assert _stored_streams(fourth_database) == {}
    holders = _holders(shard_urls)
    assert {s: set(held) for s, held in holders.items()} == {
        s: set(held) for s, held in stored_before.items()
    }


def test_new_users_spread_over_every_open_shard_including_an_added_one(
    sharded_url: str, fourth_database: str
) -> None:
    add_shard(sharded_url, fourth_database)

    routes = _write(sharded_url, [f"late-{n}" for n in range(40)])

    assert set(routes.values()) == {0, 1, 2, 3}


def test_a_drained_shard_gets_no_new_users_and_keeps_its_own(
    sharded_url: str, shard_urls: list[str]
) -> None:
    early = _write(sharded_url, [f"early-{n}" for n in range(30)])
    kept = [user for user, shard in early.items() if shard == 1]

    drain_shard(sharded_url, shard_urls[1])
    late = _write(sharded_url, [f"late-{n}" for n in range(40)])
    again = _write(sharded_url, kept, thread="after-the-drain")

    assert set(late.values()) == {0, 2}
    assert kept
    assert set(again.values()) == {1}


def test_a_reopened_shard_takes_new_users_again(
    sharded_url: str, shard_urls: list[str]
) -> None:
    drain_shard(sharded_url, shard_urls[1])
    drain_shard(sharded_url, shard_urls[1], reopen=True)

    routes = _write(sharded_url, [f"user-{n}" for n in range(30)])

    assert set(routes.values()) == {0, 1, 2}


def test_a_process_open_before_the_directory_cannot_place_a_new_user_on_shard_0(
    shard_urls: list[str],
) -> None:
    with ContextLedger.open(shard_urls[0]) as early:
        early.open_context("old-user", "t")
        for shard_url in shard_urls[1:]:
            add_shard(shard_urls[0], shard_url)
        elsewhere = [
            user
            for user, shard in _write(
                shard_urls[0], [f"new-{n}" for n in range(12)]
            ).items()
            if shard != 0
        ]
        before = _holders(shard_urls)

        with pytest.raises(LedgerError, match="not assigned to shard 0"):
            early.open_context(elsewhere[0], "from-the-early-process")
        with pytest.raises(LedgerError, match="not assigned to shard 0"):
            early.open_context("never-assigned", "t")
        reused = early.open_context("old-user", "t")

    assert type(early) is ContextLedger
    assert _holders(shard_urls) == before | {user_aggregate_id("old-user"): {0: 2}}
    assert reused.reuse_count == 1


def test_repeated_calls_for_known_users_do_not_read_the_directory_again(
    sharded_url: str,
) -> None:
    users = [f"user-{n}" for n in range(20)]
    with ContextLedger.open(sharded_url) as ledger:
        assert isinstance(ledger, ShardedLedger)
        for user in users:
            ledger.open_context(user, "t")
        reads = ledger.directory.reads

        for _ in range(5):
            for user in users:
                ledger.open_context(user, "t")
                ledger.get_context(user, "t")
                ledger.history(user, limit=1)

        assert ledger.directory.reads == reads
