"""A user moved to another shard: the views count each of its events once, whether
they read the source, the target's copies or both, and a rebuild after the move
gives the same views."""

import threading
from collections.abc import Iterator

import pytest

from ledger import ContextLedger
from ledger._shard_moves import move_user
from ledger._sharded import ShardedLedger
from projections import Projections, continuity_of

pytestmark = pytest.mark.postgres

EQUAL: dict[str, list[str]] = {"active": [], "audit": [], "continuity": []}
USERS = [f"user-{n}" for n in range(30)]


@pytest.fixture(autouse=True)
def short_route_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTXLEDGER_SHARD_CACHE_SECONDS", "0.3")


@pytest.fixture
def ledger(sharded_url: str) -> Iterator[ShardedLedger]:
    with ContextLedger.open(sharded_url) as opened:
        assert isinstance(opened, ShardedLedger)
        for user in USERS:
            talk(opened, user, "before")
        yield opened


@pytest.fixture
def views(sharded_url: str) -> Iterator[Projections]:
    with Projections.open(sharded_url, batch_size=5) as opened:
        yield opened


def talk(ledger: ShardedLedger, user: str, thread: str) -> None:
    context = ledger.open_context(user, thread, metadata={"thread": thread})
    ledger.update_context(user, context.context_id, metadata={"more": 1})
    ledger.open_context(user, thread)  # reused


def user_on(ledger: ShardedLedger, shard: int) -> str:
    return next(user for user in USERS if ledger.shard_of(user) == shard)


def assert_counted_once(views: Projections, ledger: ShardedLedger) -> None:
    """The views equal a replay, and each user's events are in them once."""
    assert views.verify() == EQUAL
    for user in USERS:
        history = ledger.history(user)
        assert [row.kind for row in views.audit_rows(user)] == [
            event.kind for event in history
        ]
        assert views.continuity(user) == continuity_of(user, history)
        assert views.active_contexts(user) == ledger.active_contexts(user)


@pytest.mark.parametrize(("source", "target"), [(2, 0), (0, 2), (1, 2)])
def test_views_caught_up_before_a_move_count_its_events_once_after_it(
    ledger: ShardedLedger,
    views: Projections,
    shard_urls: list[str],
    source: int,
    target: int,
) -> None:
    mover = user_on(ledger, source)
    views.catch_up()

    move_user(shard_urls[0], mover, shard_urls[target])
    talk(ledger, mover, "after")
    views.catch_up()

    assert ledger.shard_of(mover) == target
    assert_counted_once(views, ledger)


@pytest.mark.parametrize(("source", "target"), [(2, 0), (0, 2)])
def test_views_that_never_read_the_source_take_the_copies_once(
    ledger: ShardedLedger,
    views: Projections,
    shard_urls: list[str],
    source: int,
    target: int,
) -> None:
    mover = user_on(ledger, source)

    move_user(shard_urls[0], mover, shard_urls[target])
    talk(ledger, mover, "after")
    views.catch_up()

    assert_counted_once(views, ledger)


@pytest.mark.parametrize(("source", "target"), [(2, 0), (0, 2)])
def test_views_that_read_both_copies_of_the_events_take_each_once(
    ledger: ShardedLedger,
    views: Projections,
    shard_urls: list[str],
    source: int,
    target: int,
) -> None:
    mover = user_on(ledger, source)

    def catch_up_while_copied(step: str) -> None:
        if step == "copy":  # the source and the target hold the events now
            views.catch_up()

    move_user(shard_urls[0], mover, shard_urls[target], on_step=catch_up_while_copied)
    talk(ledger, mover, "after")
    views.catch_up()

    assert_counted_once(views, ledger)


def test_a_rebuild_after_a_move_gives_the_views_the_incremental_ones_kept(
    ledger: ShardedLedger, views: Projections, shard_urls: list[str]
) -> None:
    mover = user_on(ledger, 1)
    views.catch_up()
    move_user(shard_urls[0], mover, shard_urls[0])
    views.catch_up()
    before = (views.audit_rows(), views.active_contexts(), views.continuity())

    views.rebuild()

    assert (views.audit_rows(), views.active_contexts(), views.continuity()) == before
    assert_counted_once(views, ledger)


def test_two_followers_count_each_event_once_while_writes_race_a_move(
    ledger: ShardedLedger, sharded_url: str, shard_urls: list[str]
) -> None:
    mover = user_on(ledger, 2)
    context = ledger.open_context(mover, "busy")
    stop, written = threading.Event(), threading.Event()

    def keep_writing() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            ledger.update_context(mover, context.context_id, metadata={"n": n})
            written.set()

    with (
        Projections.open(sharded_url, batch_size=3) as first,
        Projections.open(sharded_url, batch_size=4) as second,
    ):
        threads = [
            threading.Thread(target=keep_writing),
            *(
                threading.Thread(
                    target=views.follow, args=(stop,), kwargs={"poll_seconds": 0.01}
                )
                for views in (first, second)
            ),
        ]
        for thread in threads:
            thread.start()
        try:
            written.wait(30)
            move_user(shard_urls[0], mover, shard_urls[1])
            talk(ledger, mover, "after")
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        first.catch_up()
        assert_counted_once(first, ledger)
