"""The views of a ledger whose users live on three PostgreSQL databases (shards):
one tracking position per view per shard, every shard's log applied, each event
once, and a rebuild that reads the shards in parallel processes."""

import threading
from collections.abc import Iterator

import pytest

from ledger import ContextLedger
from ledger._shard_admin import add_shard
from ledger._sharded import ShardedLedger
from projections import (
    PositionsPerShard,
    Projections,
    ShardViewStatus,
    UndecodableEvent,
    continuity_of,
)
from tests.helpers import chat
from tests.tampering import set_stored_event_bytes

pytestmark = pytest.mark.postgres

USERS = 9


@pytest.fixture
def ledger(sharded_url: str) -> Iterator[ShardedLedger]:
    with ContextLedger.open(sharded_url) as opened:
        assert isinstance(opened, ShardedLedger)
        yield opened


@pytest.fixture
def views(sharded_url: str) -> Iterator[Projections]:
    with Projections.open(sharded_url, batch_size=7) as opened:
        yield opened


def written(ledger: ShardedLedger) -> int:
    """How many events every shard's log holds now."""
    return sum(ledger.shard(shard).chain_size() for shard in ledger.shard_ids())


def test_the_users_of_the_history_live_on_every_shard(ledger: ShardedLedger) -> None:
    chat(ledger, users=USERS, messages=4)

    shards = {ledger.shard_of(f"u{user}") for user in range(USERS)}

    assert shards == {0, 1, 2}


def test_views_equal_a_replay_of_every_shard_after_writes_spread_over_them(
    ledger: ShardedLedger, views: Projections
) -> None:
    chat(ledger, users=USERS, messages=8)

    applied = views.catch_up()

    assert applied == {"active": written(ledger)} | {
        "audit": written(ledger),
        "continuity": written(ledger),
    }
    assert views.verify() == {"active": [], "audit": [], "continuity": []}
    assert views.count_audit() == written(ledger)


def test_each_user_reads_in_the_views_as_in_the_ledger(
    ledger: ShardedLedger, views: Projections
) -> None:
    chat(ledger, users=USERS, messages=6)

    views.catch_up()

    for user in (f"u{n}" for n in range(USERS)):
        assert views.active_contexts(user) == ledger.active_contexts(user)
        assert views.continuity(user) == continuity_of(user, ledger.history(user))
        kinds = [row.kind for row in views.audit_rows(user)]
        assert kinds == [event.kind for event in ledger.history(user)]


def test_each_view_keeps_a_position_per_shard(
    ledger: ShardedLedger, views: Projections
) -> None:
    chat(ledger, users=USERS, messages=3)

    views.catch_up()
    rows = [row for row in views.status() if isinstance(row, ShardViewStatus)]

    assert len(rows) == len(views.status())
    heads = views.heads()
    assert sorted(heads) == [0, 1, 2]
    assert {(row.view, row.shard): (row.position, row.lag) for row in rows} == {
        (view, shard): (heads[shard], 0)
        for view in ("active", "audit", "continuity")
        for shard in heads
    }


def test_a_sharded_ledger_has_no_single_head(views: Projections) -> None:
    with pytest.raises(PositionsPerShard, match="heads"):
        views.head()
    with pytest.raises(PositionsPerShard, match="one per shard"):
        views.wait(3)


def test_follow_applies_new_events_of_every_shard_and_wait_takes_their_heads(
    ledger: ShardedLedger, views: Projections
) -> None:
    stop = threading.Event()
    follower = threading.Thread(
        target=views.follow, args=(stop,), kwargs={"poll_seconds": 0.05}
    )
    follower.start()
    try:
        chat(ledger, users=USERS, messages=4)
        views.wait(views.heads(), timeout=30)
    finally:
        stop.set()
        follower.join()

    assert views.count_audit() == written(ledger)
    assert views.verify() == {"active": [], "audit": [], "continuity": []}


def test_a_rebuild_over_shards_gives_the_views_incremental_processing_built(
    ledger: ShardedLedger, views: Projections
) -> None:
    chat(ledger, users=USERS, messages=6)
    views.catch_up()
    before = (views.active_contexts(), views.audit_rows(), views.continuity())

    applied = views.rebuild()

    assert applied == dict.fromkeys(("active", "audit", "continuity"), written(ledger))
    assert (views.active_contexts(), views.audit_rows(), views.continuity()) == before
    assert views.verify() == {"active": [], "audit": [], "continuity": []}


def test_views_of_a_database_that_becomes_shard_0_keep_their_positions(
    shard_urls: list[str],
) -> None:
    with ContextLedger.open(shard_urls[0]) as single:
        chat(single, users=3, messages=4)
    with Projections.open(shard_urls[0]) as views:
        before = views.catch_up()["audit"]
    for shard_url in shard_urls[1:]:
        add_shard(shard_urls[0], shard_url)
    with ContextLedger.open(shard_urls[0]) as ledger:
        assert isinstance(ledger, ShardedLedger)
        for n in range(USERS):
            ledger.open_context(f"newcomer-{n}", "t")

        with Projections.open(shard_urls[0]) as views:
            applied = views.catch_up()
            found = views.verify()
            counted = views.count_audit()

    assert applied["audit"] == USERS
    assert counted == before + USERS
    assert found == {"active": [], "audit": [], "continuity": []}


def test_wait_takes_the_position_a_change_feed_gave(
    ledger: ShardedLedger, views: Projections
) -> None:
    feed = ledger.changes(after="0:0.1:0.2:0")
    chat(ledger, users=USERS, messages=2)
    changes = feed.poll()
    while len(changes) < written(ledger):
        changes += feed.poll()
    feed.close()
    stop = threading.Event()
    follower = threading.Thread(target=views.follow, args=(stop,))
    follower.start()
    try:
        views.wait(changes[-1][0], timeout=30)
    finally:
        stop.set()
        follower.join()

    assert views.count_audit() == written(ledger)


def test_an_undecodable_event_stops_only_its_shards_part_and_names_the_shard(
    ledger: ShardedLedger, views: Projections, shard_urls: list[str]
) -> None:
    chat(ledger, users=USERS, messages=2)
    user = next(f"u{n}" for n in range(USERS) if ledger.shard_of(f"u{n}") == 1)
    set_stored_event_bytes(shard_urls[1].split("&")[0], user, 2, b"\xc1")

    with pytest.raises(UndecodableEvent, match="cannot be decoded") as raised:
        views.catch_up()

    assert any("shard 1" in note for note in raised.value.__notes__)
    rows = [row for row in views.status() if isinstance(row, ShardViewStatus)]
    assert all(row.lag == 0 for row in rows if row.shard != 1)
    assert all(row.lag > 0 for row in rows if row.shard == 1)
