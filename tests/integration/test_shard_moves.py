"""Moving a user between shards: writes racing the move land once, on the right
shard, and a mover killed with SIGKILL at any step leaves one owner and no loss."""

import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import psycopg.sql
import pytest

from ledger import ContextLedger
from ledger._domain.contexts import user_aggregate_id
from ledger._shard_moves import finish_departures, move_user
from ledger._sharded import ShardedLedger
from ledger.errors import LedgerConfigError
from tests.helpers import dsn_and_schema

pytestmark = pytest.mark.postgres

CACHE_SECONDS = "0.3"


@pytest.fixture(autouse=True)
def short_route_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTXLEDGER_SHARD_CACHE_SECONDS", CACHE_SECONDS)


def stored_versions(url: str, user: str) -> list[int]:
    dsn, schema = dsn_and_schema(url)
    with psycopg.connect(dsn) as connection:
        rows = connection.execute(
            psycopg.sql.SQL(
                "SELECT originator_version FROM {} WHERE originator_id = %s "
                "ORDER BY originator_version"
            ).format(psycopg.sql.Identifier(schema, "ctxledger_events")),
            (user_aggregate_id(user),),
        ).fetchall()
    return [int(row[0]) for row in rows]


def sharded(url: str) -> ShardedLedger:
    ledger = ContextLedger.open(url)
    assert isinstance(ledger, ShardedLedger)
    return ledger


class Writer:
    """Updates one context in a loop from a thread, counting what succeeded."""

    def __init__(self, url: str, user: str, context_id: str, name: str) -> None:
        self.ledger = sharded(url)
        self.user, self.context_id, self.name = user, context_id, name
        self.done: list[int] = []
        self.failures: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            n += 1
            try:
                self.ledger.update_context(
                    self.user,
                    self.context_id,
                    metadata={self.name: n},
                    request_id=f"{self.name}-{n}",
                )
            except Exception as error:  # noqa: BLE001 - reported by the test
                self.failures.append(error)
                return
            self.done.append(n)
            # Paced like a chat user's calls: three tight loops on one user would
            # starve each other (ConcurrencyConflict) with or without a move.
            self._stop.wait(0.005)

    @contextmanager
    def running(self) -> Iterator["Writer"]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=120)
            self.ledger.close()


def updates_in_history(ledger: ContextLedger, user: str, name: str) -> list[int]:
    return [
        event.details["metadata"][name]
        for event in ledger.history(user)
        if event.kind == "updated" and name in event.details.get("metadata", {})
    ]


def test_writes_racing_a_move_land_once_on_the_new_shard(
    sharded_url: str, shard_urls: list[str]
) -> None:
    with sharded(sharded_url) as ledger:
        context = ledger.open_context("alice", "thread")
        source = ledger.shard_of("alice")
        assert source is not None
        target = (source + 1) % len(shard_urls)
        writers = [
            Writer(sharded_url, "alice", context.context_id, f"w{i}") for i in range(3)
        ]
        with writers[0].running(), writers[1].running(), writers[2].running():
            result = move_user(sharded_url, "alice", shard_urls[target])

        assert [w.failures for w in writers] == [[], [], []]
        assert (result.from_shard, result.to_shard) == (source, target)
        assert ledger.shard_of("alice") == target
        assert stored_versions(shard_urls[source], "alice") == []
        written = 1 + sum(len(w.done) for w in writers)
        assert stored_versions(shard_urls[target], "alice") == list(
            range(1, written + 1)
        )
        for writer in writers:
            assert updates_in_history(ledger, "alice", writer.name) == writer.done
        assert ledger.verify_chain().holds


KILL_AT = """
import os, signal, sys
from ledger._shard_moves import move_user

def step(name):
    if name == sys.argv[4]:
        os.kill(os.getpid(), signal.SIGKILL)

move_user(sys.argv[1], sys.argv[2], sys.argv[3], on_step=step)
"""


@pytest.mark.parametrize(
    ("step", "owner"),
    [
        ("mark", "source"),
        ("fence", "source"),
        ("copy", "target"),
        ("verify", "target"),
        ("switch", "target"),
    ],
)
def test_a_mover_killed_at_any_step_leaves_one_owner_and_no_loss(
    sharded_url: str, shard_urls: list[str], step: str, owner: str
) -> None:
    with sharded(sharded_url) as ledger:
        context = ledger.open_context("bob", "thread", metadata={"n": 0})
        for n in range(1, 5):
            ledger.update_context("bob", context.context_id, metadata={"n": n})
        source = ledger.shard_of("bob")
        assert source is not None
        target = (source + 1) % len(shard_urls)

        killed = subprocess.run(
            [
                sys.executable,
                "-c",
                KILL_AT,
                sharded_url,
                "bob",
                shard_urls[target],
                step,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert killed.returncode == -9, killed.stderr

        # The next write settles the move cut short, and lands once.
        ledger.update_context("bob", context.context_id, metadata={"n": 5})
        expected = {"source": source, "target": target}[owner]
        assert ledger.shard_of("bob") == expected
        finish_departures(ledger)
        assert stored_versions(shard_urls[expected], "bob") == list(range(1, 7))
        others = [url for i, url in enumerate(shard_urls) if i != expected]
        assert [stored_versions(url, "bob") for url in others] == [[], []]
        assert [e.details["metadata"]["n"] for e in ledger.history("bob")] == list(
            range(6)
        )
        assert ledger.verify_chain().holds


def test_moving_a_user_to_its_own_shard_is_refused(
    sharded_url: str, shard_urls: list[str]
) -> None:
    with sharded(sharded_url) as ledger:
        ledger.open_context("carol", "thread")
        here = ledger.shard_of("carol")
        assert here is not None
    with pytest.raises(LedgerConfigError, match="already on shard"):
        move_user(sharded_url, "carol", shard_urls[here])


def test_moving_to_a_database_that_is_no_shard_is_refused(
    sharded_url: str, postgres_url: str
) -> None:
    with sharded(sharded_url) as ledger:
        ledger.open_context("dave", "thread")
    with pytest.raises(LedgerConfigError, match="is not a shard of this ledger"):
        move_user(sharded_url, "dave", postgres_url)


def test_a_user_without_events_is_placed_on_the_chosen_shard(
    sharded_url: str, shard_urls: list[str]
) -> None:
    placed = move_user(sharded_url, "erin", shard_urls[2])
    assert (placed.from_shard, placed.to_shard, placed.events) == (2, 2, 0)
    with sharded(sharded_url) as ledger:
        ledger.open_context("erin", "thread")
        assert ledger.shard_of("erin") == 2
