"""One shard out of reach (its connections go through a TCP proxy the test cuts):
a feed gives the other shards' events and says the shard fails only when it has
nothing else; a feed of a user on another shard never hears of it; back, the
shard's events come by themselves, each once."""

import time

import pytest

from ledger import ContextLedger, LedgerEvent, StorageUnavailable
from ledger._feed_positions import sharded_position
from ledger._sharded import ShardedLedger
from ledger._sharded_feed import ShardedChangeFeed
from tests.shard_proxy import DOWN, ProxiedShards

pytestmark = pytest.mark.postgres

Change = tuple[str, LedgerEvent]


def _open(url: str) -> ShardedLedger:
    ledger = ContextLedger.open(url)
    assert isinstance(ledger, ShardedLedger)
    return ledger


def _open_elsewhere(url: str, own_url: str) -> ShardedLedger:
    """The ledger of a host that reaches shard 2 by a route of its own, ``own_url``."""
    ledger = _open(url)
    ledger._urls[DOWN] = own_url  # (before its first use of the shard)
    ledger.shard(DOWN)
    return ledger


@pytest.fixture
def users(proxied_shards: ProxiedShards) -> dict[int, list[str]]:
    """Users of each shard, each with one event."""
    by_shard: dict[int, list[str]] = {0: [], 1: [], 2: []}
    with _open(proxied_shards.url) as ledger:
        for n in range(30):
            ledger.open_context(f"user-{n}", "t0")
            by_shard[ledger.shard_of(f"user-{n}") or 0].append(f"user-{n}")
    assert all(by_shard.values())
    return by_shard


def _collect(
    feed: ShardedChangeFeed, count: int, seconds: float = 60
) -> tuple[list[Change], list[StorageUnavailable]]:
    """Polls until ``count`` changes came; what it raised meanwhile."""
    changes: list[Change] = []
    failures: list[StorageUnavailable] = []
    deadline = time.monotonic() + seconds
    while len(changes) < count and time.monotonic() < deadline:
        try:
            changes += feed.poll()
        except StorageUnavailable as failure:
            failures.append(failure)
        time.sleep(0.05)
    return changes, failures


def _write(ledger: ContextLedger, users: list[str], thread: str) -> None:
    for user in users:
        ledger.open_context(user, thread)


def test_a_shard_out_of_reach_holds_back_only_its_own_events(
    proxied_shards: ProxiedShards, shard_urls: list[str], users: dict[int, list[str]]
) -> None:
    healthy = users[0] + users[1]
    url = proxied_shards.url
    with (
        _open(url) as reader,
        _open(url) as writer,
        _open_elsewhere(url, shard_urls[DOWN]) as elsewhere,
        reader.changes() as feed,
    ):
        proxied_shards.cut()
        _write(writer, healthy, "during")
        _write(elsewhere, users[DOWN], "during")  # written where it can be reached
        during, failures = _collect(feed, len(healthy))
        proxied_shards.restore()
        _write(writer, users[DOWN], "after")
        after, _ = _collect(feed, 2 * len(users[DOWN]))

    assert sorted(e.user_id for _, e in during) == sorted(healthy)
    assert failures
    assert all(f"shard {DOWN}" in str(failure) for failure in failures)
    taken = [(e.user_id, e.thread_id) for _, e in after]
    expected = [(u, t) for u in users[DOWN] for t in ("during", "after")]
    assert sorted(taken) == sorted(expected)


def test_a_users_feed_never_hears_of_another_shard_out_of_reach(
    proxied_shards: ProxiedShards, users: dict[int, list[str]]
) -> None:
    user = users[1][0]
    with _open(proxied_shards.url) as ledger, ledger.changes(user) as feed:
        proxied_shards.cut()
        _write(ledger, [user] * 3, "during")
        changes = [next(feed) for _ in range(3)]  # raises nothing in between

    assert [e.version for _, e in changes] == [2, 3, 4]


def test_a_feed_started_while_a_shard_is_out_of_reach_starts_it_once_reached(
    proxied_shards: ProxiedShards, users: dict[int, list[str]]
) -> None:
    proxied_shards.cut()
    with _open(proxied_shards.url) as ledger:  # shard 2 was never reached here
        feed = ledger.changes()
        _write(ledger, users[0][:2], "during")
        during, _ = _collect(feed, 2)
        proxied_shards.restore()
        deadline = time.monotonic() + 30
        while "head" in feed.position and time.monotonic() < deadline:
            _collect(feed, 1, seconds=0.2)
        _write(ledger, users[DOWN][:2], "after")
        after, _ = _collect(feed, 2)
        feed.close()

    assert all(f"{DOWN}:head" in position for position, _ in during)
    assert sorted(e.user_id for _, e in after) == sorted(users[DOWN][:2])
    assert all(sharded_position("after", p)[DOWN] for p, _ in after)
