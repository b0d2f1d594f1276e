"""Moves beside the sweeps and the views: an erasure during a move cut short
holds, a user moved there and back counts once, and a shard is no ledger."""

import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from ledger import ContextLedger
from ledger._shard_admin import _guard as install_shard_guard
from ledger._shard_admin import add_shard
from ledger._shard_moves import move_user
from ledger._sharded import ShardedLedger
from ledger._sharded_feed import ShardedChangeFeed
from ledger.errors import LedgerConfigError
from projections import Projections

pytestmark = pytest.mark.postgres

KILL_AT = """
import os, signal, sys
from ledger._shard_admin import _guard as install_shard_guard
from ledger._shard_admin import add_shard
from ledger._shard_moves import move_user

def step(name):
    if name == sys.argv[4]:
        os.kill(os.getpid(), signal.SIGKILL)

move_user(sys.argv[1], sys.argv[2], sys.argv[3], on_step=step)
"""


@pytest.fixture(autouse=True)
def short_route_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTXLEDGER_SHARD_CACHE_SECONDS", "0.3")


def kill_mover_at(step: str, url: str, user: str, to_url: str) -> None:
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AT, url, user, to_url, step],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode == -9, killed.stderr


@pytest.mark.parametrize("step", ["fence", "copy", "verify"])
def test_an_erasure_during_a_move_cut_short_holds(
    sharded_url: str, shard_urls: list[str], step: str
) -> None:
    with ContextLedger.open(sharded_url) as ledger:
        assert isinstance(ledger, ShardedLedger)
        ledger.open_context("bob", "thread", metadata={"name": "Bob Secret"})
        source = ledger.shard_of("bob")
        assert source is not None
        kill_mover_at(step, sharded_url, "bob", shard_urls[(source + 1) % 3])

        forgotten = ledger.forget_inactive(datetime.now(UTC) + timedelta(seconds=1))
        ledger.open_context("bob", "later")  # settles nothing more: bob is on one shard

        assert forgotten == {"bob": 1}
        first = ledger.history("bob")[0]
        assert first.erased
        assert first.details.get("metadata") is None
        assert ledger.verify_chain().holds


def test_a_user_moved_away_and_back_counts_once_in_the_views(
    sharded_url: str, shard_urls: list[str]
) -> None:
    with (
        ContextLedger.open(sharded_url) as ledger,
        Projections.open(sharded_url) as views,
    ):
        assert isinstance(ledger, ShardedLedger)
        context = ledger.open_context("carol", "thread")
        ledger.update_context("carol", context.context_id, metadata={"n": 1})
        home = ledger.shard_of("carol")
        assert home is not None
        views.catch_up()

        move_user(sharded_url, "carol", shard_urls[(home + 1) % 3])
        move_user(sharded_url, "carol", shard_urls[home])
        ledger.update_context("carol", context.context_id, metadata={"n": 2})
        views.catch_up()

        assert ledger.shard_of("carol") == home
        kinds = [row.kind for row in views.audit_rows(user_id="carol")]
        assert kinds == ["created", "updated", "updated"]
        differences = views.verify()
        assert differences
        assert all(found == [] for found in differences.values()), differences


def test_opening_a_shards_own_url_is_refused(
    sharded_url: str, shard_urls: list[str]
) -> None:
    with pytest.raises(LedgerConfigError, match="is a shard of a sharded ledger"):
        ContextLedger.open(shard_urls[1])


def _moved_away_and_back(
    ledger: ShardedLedger, url: str, shard_urls: list[str]
) -> None:
    """alice's 4 events, a neighbour's after them on her shard, then alice moved
    to the next shard and back."""
    for n in range(4):
        ledger.open_context("alice", f"thread-{n}")
    home = ledger.shard_of("alice")
    assert home is not None
    neighbour = next(
        user
        for user in (f"neighbour-{n}" for n in range(200))
        if ledger.open_context(user, "thread") and ledger.shard_of(user) == home
    )
    assert neighbour
    move_user(url, "alice", shard_urls[(home + 1) % 3])
    move_user(url, "alice", shard_urls[home])


def _until_quiet(feed: ShardedChangeFeed) -> list[int]:
    """alice's versions the feed gives until nothing came for 1.5 s."""
    versions: list[int] = []
    quiet_until = time.monotonic() + 1.5
    while time.monotonic() < quiet_until:
        changes = feed.poll()
        if changes:
            quiet_until = time.monotonic() + 1.5
        versions += [event.version for _, event in changes if event.user_id == "alice"]
        time.sleep(0.05)
    return versions


def test_a_feed_from_the_start_gives_a_user_moved_away_and_back_once(
    sharded_url: str, shard_urls: list[str]
) -> None:
    with ContextLedger.open(sharded_url) as ledger:
        assert isinstance(ledger, ShardedLedger)
        _moved_away_and_back(ledger, sharded_url, shard_urls)

        with ledger.changes(after="0:0.1:0.2:0") as feed:
            versions = _until_quiet(feed)

    assert sorted(versions) == [1, 2, 3, 4]


@pytest.mark.parametrize("batch_size", [1, 1000])
def test_views_from_nothing_count_a_user_moved_away_and_back_once(
    sharded_url: str, shard_urls: list[str], batch_size: int
) -> None:
    with ContextLedger.open(sharded_url) as ledger:
        assert isinstance(ledger, ShardedLedger)
        _moved_away_and_back(ledger, sharded_url, shard_urls)

    with Projections.open(sharded_url, batch_size=batch_size) as views:
        views.catch_up()
        kinds = [row.kind for row in views.audit_rows(user_id="alice")]

    assert kinds == ["created"] * 4


def test_an_add_cut_short_after_the_guard_can_be_run_again(
    shard_urls: list[str],
) -> None:
    ContextLedger.open(shard_urls[1]).close()
    install_shard_guard(shard_urls[1])  # where an add that died stopped

    added = add_shard(shard_urls[0], shard_urls[1])

    assert added.shard_id == 1
