"""A user moved to another shard: every feed gives each of the user's events once,
whether it read through the move, read both logs while the copy and the original
were both stored, or resumed from a position given before or during the move;
a feed of that user follows it to its new shard."""

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from ledger import ContextLedger, LedgerEvent
from ledger._domain.contexts import user_aggregate_id
from ledger._feed_positions import position_text, sharded_position
from ledger._shard_moves import move_user
from ledger._sharded import ShardedLedger
from ledger._sharded_feed import ShardedChangeFeed

pytestmark = pytest.mark.postgres

Change = tuple[str, LedgerEvent]


@pytest.fixture
def ledger(sharded_url: str) -> Iterator[ShardedLedger]:
    with ContextLedger.open(sharded_url) as opened:
        assert isinstance(opened, ShardedLedger)
        yield opened


def _drain(feed: ShardedChangeFeed, count: int, seconds: float = 30) -> list[Change]:
    changes: list[Change] = []
    deadline = time.monotonic() + seconds
    while len(changes) < count and time.monotonic() < deadline:
        changes += feed.poll()
    return changes


def _quiet(feed: ShardedChangeFeed, seconds: float = 1.0) -> list[Change]:
    """What the feed gives until it has had nothing for ``seconds``."""
    changes: list[Change] = []
    idle_until = time.monotonic() + seconds
    while time.monotonic() < idle_until:
        more = feed.poll()
        if more:
            changes += more
            idle_until = time.monotonic() + seconds
        time.sleep(0.05)
    return changes


def _versions(changes: list[Change], user: str = "alice") -> list[int]:
    return [event.version for _, event in changes if event.user_id == user]


def _write(ledger: ContextLedger, user: str, threads: range) -> None:
    for n in threads:
        ledger.open_context(user, f"t{n}")


def _move(
    url: str,
    shard_urls: list[str],
    ledger: ShardedLedger,
    at: dict[str, Callable[[], None]] | None = None,
) -> tuple[int, int]:
    """Moves alice to another shard, calling ``at[step]`` after that step."""
    source = ledger.shard_of("alice")
    assert source is not None
    target = (source + 1) % len(shard_urls)
    steps = at or {}
    move_user(url, "alice", shard_urls[target], on_step=lambda s: steps.get(s, _no)())
    return source, target


def _no() -> None:
    pass


def test_a_feed_that_reads_through_a_move_gives_each_event_once(
    sharded_url: str, shard_urls: list[str], ledger: ShardedLedger
) -> None:
    feed = ledger.changes()
    _write(ledger, "alice", range(5))
    before = _drain(feed, 5)
    _move(sharded_url, shard_urls, ledger)
    _write(ledger, "alice", range(5, 8))
    after = _quiet(feed)
    feed.close()

    assert _versions(before + after) == list(range(1, 9))


def test_a_feed_that_takes_a_copy_first_passes_its_original_read_before_the_move(
    sharded_url: str, shard_urls: list[str], ledger: ShardedLedger
) -> None:
    user = _user_off_shard_zero(ledger)
    feed = ledger.changes()  # takes nothing until the copies are stored
    assert feed.take() is None  # (its shards' feeds join their readers now)
    _write(ledger, user, range(1, 5))
    _quiet(ledger.changes(user, after=0))  # the moves around the originals, kept
    source = ledger.shard_of(user)
    assert source is not None
    heads = sharded_position("after", ledger.changes().position)

    def copies_read() -> None:  # another feed reads the moves around the copies
        past_originals = position_text(heads | {0: 0})
        assert _quiet(ledger.changes(user, after=past_originals)) == []

    move_user(sharded_url, user, shard_urls[0], on_step=_at("switch", copies_read))
    taken = _quiet(feed)  # shard 0 (the copies) comes first in turn
    feed.close()

    assert _versions(taken, user) == [2, 3, 4, 5]


def _user_off_shard_zero(ledger: ShardedLedger) -> str:
    for n in range(100):
        ledger.open_context(f"candidate-{n}", "t0")
        if ledger.shard_of(f"candidate-{n}") != 0:
            return f"candidate-{n}"
    pytest.fail("no user went to shard 1 or 2")


def _at(step: str, call: Callable[[], None]) -> Callable[[str], None]:
    return lambda done: call() if done == step else None


def test_a_feed_that_reads_both_logs_during_a_move_gives_each_event_once(
    sharded_url: str, shard_urls: list[str], ledger: ShardedLedger
) -> None:
    _write(ledger, "bob", range(2))
    feeds = [ledger.changes(after=0) for _ in range(3)]  # none has read alice's
    _write(ledger, "alice", range(6))
    during: list[list[Change]] = [[] for _ in feeds]

    def read_all() -> None:  # the originals and their copies are both stored
        for taken, feed in zip(during, feeds, strict=True):
            taken.extend(_quiet(feed, 0.5))

    _move(sharded_url, shard_urls, ledger, {"switch": read_all})
    _write(ledger, "alice", range(6, 8))
    rest = [_quiet(feed) for feed in feeds]

    for taken, later in zip(during, rest, strict=True):
        assert _versions(taken + later) == list(range(1, 9))
        assert _versions(taken + later, "bob") == [1, 2]


def test_a_feed_resumed_from_a_position_before_a_move_gives_each_event_once(
    sharded_url: str, shard_urls: list[str], ledger: ShardedLedger
) -> None:
    feed = ledger.changes()
    _write(ledger, "alice", range(5))
    first = _drain(feed, 2)[:2]
    feed.close()
    resumed_during: list[Change] = []

    def resume() -> None:
        resumed_during.extend(_quiet(ledger.changes(after=first[-1][0])))

    _move(sharded_url, shard_urls, ledger, {"switch": resume})
    _write(ledger, "alice", range(5, 7))
    resumed_after = _quiet(ledger.changes(after=first[-1][0]))

    assert _versions(first + resumed_during) == [1, 2, 3, 4, 5]
    assert _versions(first + resumed_after) == list(range(1, 8))


def test_a_feed_from_before_a_finished_move_gives_the_moved_users_events_once(
    sharded_url: str, shard_urls: list[str], ledger: ShardedLedger
) -> None:
    start = ledger.changes().position  # before alice's events
    _write(ledger, "alice", range(4))
    source = ledger.shard_of("alice")
    neighbours = _users_on(ledger, source, 3)  # written after alice, on her shard
    _move(sharded_url, shard_urls, ledger)  # her originals there are gone now

    resumed = _quiet(ledger.changes(after=start))
    from_zero = _quiet(ledger.changes(after="0:0.1:0.2:0"))

    for taken in (resumed, from_zero):
        assert _versions(taken) == [1, 2, 3, 4]
        assert {e.user_id for _, e in taken} >= set(neighbours)


def test_a_position_past_a_moved_users_deleted_events_resumes_with_them_once(
    sharded_url: str, shard_urls: list[str], ledger: ShardedLedger
) -> None:
    user = _user_on(ledger, 0)  # shard 0 comes first in a feed's turn
    neighbours = _users_on(ledger, 0, 2)
    start = ledger.changes().position  # only shard 0's users write after it
    _write(ledger, user, range(1, 4))
    _write(ledger, neighbours[0], range(1, 3))
    move_user(sharded_url, user, shard_urls[2])  # her events on shard 0 are gone

    for _ in range(5):  # (until the neighbour's event comes first in turn)
        feed = ledger.changes(after=start)
        first = next(feed)
        feed.close()
        rest = _quiet(ledger.changes(after=first[0]), 0.5)

        assert _versions([first, *rest], user) == [2, 3, 4]
        if first[1].user_id == neighbours[0]:  # past her positions on shard 0
            assert user_aggregate_id(user).hex in first[0]  # how far it read her
            return
    pytest.fail("the moved user's copies came first every time")


def _user_on(ledger: ShardedLedger, shard: int) -> str:
    for n in range(100):
        ledger.open_context(f"mover-{n}", "t0")
        if ledger.shard_of(f"mover-{n}") == shard:
            return f"mover-{n}"
    pytest.fail(f"no user went to shard {shard}")


def _users_on(ledger: ShardedLedger, shard: int | None, count: int) -> list[str]:
    found: list[str] = []
    for n in range(200):
        ledger.open_context(f"neighbour-{n}", "t")
        if ledger.shard_of(f"neighbour-{n}") == shard:
            found.append(f"neighbour-{n}")
            if len(found) == count:
                return found
    pytest.fail(f"no {count} users went to shard {shard}")


def test_a_position_past_the_copies_does_not_give_the_originals_again(
    sharded_url: str, shard_urls: list[str], ledger: ShardedLedger
) -> None:
    start = ledger.changes().position  # every shard's head, before alice's events
    _write(ledger, "alice", range(4))
    _quiet(ledger.changes("alice", after=start))  # the moves around them, kept
    given: list[Change] = []

    def resume_past_the_copies() -> None:
        # A consumer that took the copies on the target, not yet the originals.
        heads = sharded_position("after", ledger.changes().position)
        positions = sharded_position("after", start)
        positions[target] = heads[target]
        given.extend(_quiet(ledger.changes(after=position_text(positions))))

    target = ((ledger.shard_of("alice") or 0) + 1) % len(shard_urls)
    _move(sharded_url, shard_urls, ledger, {"switch": resume_past_the_copies})

    assert _versions(given) == []


def test_a_users_feed_follows_the_user_to_its_new_shard(
    sharded_url: str, shard_urls: list[str], ledger: ShardedLedger
) -> None:
    feed = ledger.changes("alice")
    _write(ledger, "alice", range(3))
    before = _drain(feed, 3)
    source, target = _move(sharded_url, shard_urls, ledger)
    _write(ledger, "alice", range(3, 6))
    after = _drain(feed, 3)
    feed.close()

    assert _versions(before + after) == list(range(1, 7))
    moved_on = [sharded_position("after", p) for p, _ in after]
    assert all(p[target] for p in moved_on)
    assert ledger.shard_of("alice") == target != source


def test_feeds_give_each_event_once_while_writers_race_a_move(
    sharded_url: str, shard_urls: list[str], ledger: ShardedLedger
) -> None:
    _write(ledger, "alice", range(2))
    everyone, alices = ledger.changes(), ledger.changes("alice")
    stop = threading.Event()

    def write(writer: ContextLedger, user: str) -> None:
        n = 0
        while not stop.is_set():
            writer.open_context(user, f"t{n % 5}")
            n += 1

    with ContextLedger.open(sharded_url) as writer:
        writers = [
            threading.Thread(target=write, args=(writer, user))
            for user in ("alice", "alice", "bob", "carol")
        ]
        for thread in writers:
            thread.start()
        _move(sharded_url, shard_urls, ledger)
        stop.set()
        for thread in writers:
            thread.join(30)
    taken, users_taken = _quiet(everyone, 2.0), _quiet(alices, 2.0)

    for user, before in (("alice", 2), ("bob", 0), ("carol", 0)):
        stored = [e.version for e in ledger.history(user)][before:]
        assert sorted(_versions(taken, user)) == stored  # each once
        assert len(stored) > 10
    assert _versions(users_taken) == [e.version for e in ledger.history("alice")][2:]
