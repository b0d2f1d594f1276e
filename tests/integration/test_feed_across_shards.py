"""The change feed of a ledger over three shards: every shard's events, each once,
each shard's in its log's order; a position per shard as text that ``after``
takes back; one user's feed; shards added later are read from their start."""

import json
import multiprocessing
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from ledger import ContextLedger, InvalidContextInput, LedgerEvent
from ledger._feed_positions import sharded_position
from ledger._shard_admin import add_shard, drain_shard
from ledger._sharded import ShardedLedger
from ledger._sharded_feed import ShardedChangeFeed

pytestmark = pytest.mark.postgres

Change = tuple[str, LedgerEvent]


def _write(url: str, prefix: str, count: int) -> None:
    with ContextLedger.open(url) as ledger:
        for n in range(count):
            ledger.open_context(f"{prefix}-{n % 7}", f"t{n % 3}")


class _Collector(threading.Thread):
    """Reads a feed in a thread until it ends."""

    def __init__(self, feed: ShardedChangeFeed) -> None:
        super().__init__(daemon=True)
        self.feed = feed
        self.changes: list[Change] = []

    def run(self) -> None:
        for change in self.feed:
            self.changes.append(change)

    def wait_for(self, count: int, seconds: float = 60) -> list[Change]:
        deadline = time.monotonic() + seconds
        while len(self.changes) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        return list(self.changes)


@pytest.fixture
def ledger(sharded_url: str) -> Iterator[ShardedLedger]:
    with ContextLedger.open(sharded_url) as opened:
        assert isinstance(opened, ShardedLedger)
        yield opened


def _positions(position: str) -> dict[int, int]:
    return {s: p or 0 for s, p in sharded_position("after", position).items()}


def _drain(feed: ShardedChangeFeed, count: int, seconds: float = 60) -> list[Change]:
    """What ``poll()`` gives until ``count`` changes came (or ``seconds``)."""
    changes: list[Change] = []
    deadline = time.monotonic() + seconds
    while len(changes) < count and time.monotonic() < deadline:
        changes += feed.poll()
    return changes


def _stored(ledger: ContextLedger, users: set[str]) -> list[tuple[str, int]]:
    return sorted((e.user_id, e.version) for u in users for e in ledger.history(u))


def test_a_feed_gives_every_shards_events_of_other_processes_once_in_order(
    sharded_url: str, ledger: ShardedLedger
) -> None:
    ledger.open_context("before", "t")  # before the feed: not in it
    with ledger.changes() as feed:
        reader = _Collector(feed)
        reader.start()
        writers = [
            multiprocessing.get_context("spawn").Process(
                target=_write, args=(sharded_url, f"p{i}", 40)
            )
            for i in range(3)
        ]
        for writer in writers:
            writer.start()
        for writer in writers:
            writer.join(90)
        seen = reader.wait_for(120)
    reader.join(5)

    assert not reader.is_alive()  # close() ended the iteration
    taken = sorted((e.user_id, e.version) for _, e in seen)
    assert taken == _stored(ledger, {e.user_id for _, e in seen})
    assert len(taken) == len(set(taken)) == 120
    assert {ledger.shard_of(e.user_id) for _, e in seen} == {0, 1, 2}
    by_shard: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for position, event in seen:
        shard = ledger.shard_of(event.user_id)
        assert shard is not None
        by_shard[shard].append(_positions(position)[shard])
    assert all(p == sorted(set(p)) for p in by_shard.values())


def test_a_feed_resumed_from_a_position_gets_each_later_event_once(
    ledger: ShardedLedger,
) -> None:
    first = ledger.changes()
    for n in range(30):
        ledger.open_context(f"user-{n % 9}", f"t{n % 2}")
    before = _drain(first, 12)[:12]
    first.close()
    for n in range(30, 45):
        ledger.open_context(f"user-{n % 9}", f"t{n % 2}")

    resumed = ledger.changes(after=before[-1][0])
    rest = _drain(resumed, 33)
    resumed.close()

    taken = [(e.user_id, e.version) for _, e in before + rest]
    assert sorted(taken) == _stored(ledger, {f"user-{n}" for n in range(9)})
    assert len(taken) == len(set(taken)) == 45


def test_a_position_is_text_that_json_and_urls_carry(ledger: ShardedLedger) -> None:
    with ledger.changes() as feed:
        ledger.open_context("alice", "t")
        (position, _), *_ = _drain(feed, 1)

    assert isinstance(position, str)
    assert json.loads(json.dumps({"position": position}))["position"] == position
    assert set(_positions(position)) == {0, 1, 2}
    assert all(c in "0123456789:." for c in position)


def test_a_users_feed_gives_only_that_users_events_from_its_shard(
    ledger: ShardedLedger,
) -> None:
    with ledger.changes("alice") as feed:
        for n in range(5):
            for user in ("alice", "bob", "carol", "dave"):
                ledger.open_context(user, f"t{n}")
        ledger.clear_user("alice")
        seen = _drain(feed, 10)

    assert {event.user_id for _, event in seen} == {"alice"}
    assert [e.version for _, e in seen] == list(range(1, 11))


def test_a_plain_position_is_shard_zeros_and_other_shards_start_at_their_start(
    ledger: ShardedLedger,
) -> None:
    for n in range(30):
        ledger.open_context(f"user-{n}", "t")
    zeros = [p for p, e in ledger.shard(0).changes(after=0).poll()]

    from_int = _drain(ledger.changes(after=zeros[0]), 29)
    from_digits = _drain(ledger.changes(after=str(zeros[0])), 29)

    assert len(from_int) == len(from_digits) == 29  # all but shard 0's first
    assert sorted(e.user_id for _, e in from_int) == sorted(
        e.user_id for _, e in from_digits
    )


@pytest.mark.parametrize(
    "after",
    [
        -1,
        True,
        1.5,
        "",
        "0:1.0:2",  # a shard twice
        "0:0.7:0",  # a shard the ledger does not have
        "0:99999999",  # beyond shard 0's head
        "0:-1",
        "a:b",
        "0:1.",
        "0:1;1:2",
        "0:\uff11",  # not ASCII digits
        "0:0." * 20_000,
    ],
)
def test_a_position_the_ledger_never_gave_is_refused(
    ledger: ShardedLedger, after: Any
) -> None:
    with pytest.raises(InvalidContextInput, match="after="):
        ledger.changes(after=after)


def test_a_shard_added_after_the_feed_started_is_read_from_its_start(
    shard_urls: list[str],
) -> None:
    url, later = shard_urls[0], shard_urls[2]
    add_shard(url, shard_urls[1])
    with ContextLedger.open(url) as ledger:
        assert isinstance(ledger, ShardedLedger)
        ledger.open_context("early", "t")
        feed = ledger.changes()
        resumed_from = _drain(ledger.changes(after=0), 1)[0][0]  # names 0 and 1
        add_shard(url, later)
        drain_shard(url, url)
        drain_shard(url, shard_urls[1])
        with ContextLedger.open(url) as writer:
            for n in range(5):
                writer.open_context(f"new-{n}", "t")  # all on the new shard 2
        seen = _drain(feed, 5, seconds=30)
        resumed = _drain(ledger.changes(after=resumed_from), 5, seconds=30)
        feed.close()
        shards = {ledger.shard_of(f"new-{n}") for n in range(5)}

    assert shards == {2}
    assert Counter(e.user_id for _, e in seen) == {f"new-{n}": 1 for n in range(5)}
    assert sorted(e.user_id for _, e in resumed) == sorted(e.user_id for _, e in seen)
    assert "2:" not in resumed_from


def test_a_single_database_takes_its_position_back_as_digits(
    postgres_url: str,
) -> None:
    with ContextLedger.open(postgres_url) as ledger:
        for n in range(4):
            ledger.open_context("alice", f"t{n}")
        first = ledger.changes(after=0).poll()[1][0]

        as_int = ledger.changes(after=first).poll()
        as_digits = ledger.changes(after=str(first)).poll()

    assert isinstance(first, int)
    assert as_int == as_digits
    assert [e.version for _, e in as_digits] == [3, 4]
