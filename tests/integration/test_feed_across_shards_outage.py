"""One shard out of reach (its connections go through a TCP proxy the test cuts):
a feed gives the other shards' events and says the shard fails only when it has
nothing else; a feed of a user on another shard never hears of it; back, the
shard's events come by themselves, each once."""

import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import pytest

from ledger import ContextLedger, LedgerEvent, StorageUnavailable
from ledger._feed_positions import sharded_position
from ledger._shard_admin import add_shard
from ledger._sharded import ShardedLedger
from ledger._sharded_feed import ShardedChangeFeed
from tests.helpers import CuttingProxy

pytestmark = pytest.mark.postgres

DOWN = 2
Change = tuple[str, LedgerEvent]


@dataclass
class Deployment:
    url: str
    down_url: str
    """Shard 2's own URL, not through the proxy: how other hosts reach it."""
    proxy: CuttingProxy

    def open(self) -> ShardedLedger:
        ledger = ContextLedger.open(self.url)
        assert isinstance(ledger, ShardedLedger)
        return ledger

    def open_elsewhere(self) -> ShardedLedger:
        """The ledger of a host that reaches shard 2 by a route of its own."""
        ledger = self.open()
        ledger._urls[DOWN] = self.down_url  # (before its first use of the shard)
        ledger.shard(DOWN)
        return ledger

    def cut(self) -> None:
        self.proxy.refuse = True
        self.proxy.cut_all()

    def restore(self) -> None:
        self.proxy.refuse = False


def _through(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{port}")
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
def deployment(shard_urls: list[str]) -> Iterator[Deployment]:
    """Three shards; shard 2 registered by the URL of a proxy in front of it."""
    target = urlsplit(shard_urls[DOWN])
    proxy = CuttingProxy((target.hostname or "127.0.0.1", target.port or 5432))
    add_shard(shard_urls[0], shard_urls[1])
    add_shard(shard_urls[0], _through(shard_urls[DOWN], proxy.port))
    yield Deployment(shard_urls[0], shard_urls[DOWN], proxy)
    proxy.refuse = False
    proxy.close()


@pytest.fixture
def users(deployment: Deployment) -> dict[int, list[str]]:
    """Users of each shard, each with one event."""
    by_shard: dict[int, list[str]] = {0: [], 1: [], 2: []}
    with deployment.open() as ledger:
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
    deployment: Deployment, users: dict[int, list[str]]
) -> None:
    healthy = users[0] + users[1]
    with (
        deployment.open() as reader,
        deployment.open() as writer,
        deployment.open_elsewhere() as elsewhere,
        reader.changes() as feed,
    ):
        deployment.cut()
        _write(writer, healthy, "during")
        _write(elsewhere, users[DOWN], "during")  # written where it can be reached
        during, failures = _collect(feed, len(healthy))
        deployment.restore()
        _write(writer, users[DOWN], "after")
        after, _ = _collect(feed, 2 * len(users[DOWN]))

    assert sorted(e.user_id for _, e in during) == sorted(healthy)
    assert failures
    assert all(f"shard {DOWN}" in str(failure) for failure in failures)
    taken = [(e.user_id, e.thread_id) for _, e in after]
    expected = [(u, t) for u in users[DOWN] for t in ("during", "after")]
    assert sorted(taken) == sorted(expected)


def test_a_users_feed_never_hears_of_another_shard_out_of_reach(
    deployment: Deployment, users: dict[int, list[str]]
) -> None:
    user = users[1][0]
    with deployment.open() as ledger, ledger.changes(user) as feed:
        deployment.cut()
        _write(ledger, [user] * 3, "during")
        changes = [next(feed) for _ in range(3)]  # raises nothing in between

    assert [e.version for _, e in changes] == [2, 3, 4]


def test_a_feed_started_while_a_shard_is_out_of_reach_starts_it_once_reached(
    deployment: Deployment, users: dict[int, list[str]]
) -> None:
    deployment.cut()
    with deployment.open() as ledger:  # shard 2 was never reached here
        feed = ledger.changes()
        _write(ledger, users[0][:2], "during")
        during, _ = _collect(feed, 2)
        deployment.restore()
        deadline = time.monotonic() + 30
        while "head" in feed.position and time.monotonic() < deadline:
            _collect(feed, 1, seconds=0.2)
        _write(ledger, users[DOWN][:2], "after")
        after, _ = _collect(feed, 2)
        feed.close()

    assert all(f"{DOWN}:head" in position for position, _ in during)
    assert sorted(e.user_id for _, e in after) == sorted(users[DOWN][:2])
    assert all(sharded_position("after", p)[DOWN] for p, _ in after)
