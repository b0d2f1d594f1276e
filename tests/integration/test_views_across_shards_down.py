"""One shard unreachable (its connections go through a TCP proxy the test cuts):
the views go on with the other shards' logs, and once it is back they catch up
with it by themselves."""

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from ledger import ContextLedger, StorageUnavailable
from ledger._sharded import ShardedLedger
from projections import Projections, ShardViewStatus
from tests.shard_proxy import DOWN, ProxiedShards

pytestmark = pytest.mark.postgres

USERS = [f"user-{n}" for n in range(24)]
EQUAL: dict[str, list[str]] = {"active": [], "audit": [], "continuity": []}


@dataclass
class Failures:
    """What ``follow`` reported through its ``on_failure`` hook."""

    noted: list[StorageUnavailable] = field(default_factory=list)

    def note(self, failure: StorageUnavailable, pause: float) -> None:
        assert pause > 0
        self.noted.append(failure)


@pytest.fixture
def ledger(proxied_shards: ProxiedShards) -> Iterator[ShardedLedger]:
    with ContextLedger.open(proxied_shards.url) as opened:
        assert isinstance(opened, ShardedLedger)
        write(opened, USERS)
        yield opened


def write(ledger: ShardedLedger, users: list[str], thread: str = "t") -> None:
    for user in users:
        context = ledger.open_context(user, thread, metadata={"n": user})
        ledger.update_context(user, context.context_id, metadata={"seen": True})


def on_shard(ledger: ShardedLedger, down: bool) -> list[str]:
    return [user for user in USERS if (ledger.shard_of(user) == DOWN) == down]


def reachable_heads(views: Projections) -> dict[int, int]:
    rows = [row for row in views.status() if isinstance(row, ShardViewStatus)]
    return {row.shard: row.head for row in rows if row.reachable}


def test_catch_up_goes_on_with_the_other_shards_then_names_the_one_cut(
    proxied_shards: ProxiedShards, ledger: ShardedLedger
) -> None:
    assert on_shard(ledger, down=True)
    proxied_shards.cut()

    with Projections.open(proxied_shards.url) as views:
        with pytest.raises(StorageUnavailable, match="failed") as raised:
            views.catch_up()
        rows = [r for r in views.status() if isinstance(r, ShardViewStatus)]

    assert "shard(s) 2 failed" in "\n".join(raised.value.__notes__)
    assert {(r.shard, r.reachable) for r in rows} == {
        (0, True),
        (1, True),
        (2, False),
    }
    assert all(r.position == r.head > 0 for r in rows if r.shard != DOWN)
    assert all(r.position == 0 for r in rows if r.shard == DOWN)


def test_follow_goes_on_while_a_shard_is_cut_and_catches_it_up_when_it_is_back(
    proxied_shards: ProxiedShards, ledger: ShardedLedger
) -> None:
    with Projections.open(proxied_shards.url) as views:
        views.catch_up()
    proxied_shards.cut()
    failures = Failures()
    stop = threading.Event()
    with (
        Projections.open(proxied_shards.url) as follower,
        Projections.open(proxied_shards.url) as reader,
    ):
        running = threading.Thread(
            target=follower.follow,
            args=(stop,),
            kwargs={"poll_seconds": 0.05, "on_failure": failures.note},
        )
        running.start()
        try:
            write(ledger, on_shard(ledger, down=False), thread="while-cut")
            reader.wait(reachable_heads(reader), timeout=30)
            proxied_shards.restore()
            write(ledger, on_shard(ledger, down=True), thread="once-back")
            reader.wait(reader.heads(), timeout=60)
        finally:
            stop.set()
            running.join()
        found = reader.verify()
        audited = reader.count_audit()

    assert failures.noted
    assert all(
        f"127.0.0.1:{proxied_shards.proxy.port}/" in str(f) for f in failures.noted
    )
    assert found == EQUAL
    assert audited == 2 * len(USERS) * 2


def test_a_rebuild_with_a_shard_cut_fails_naming_it_and_keeps_the_live_views(
    proxied_shards: ProxiedShards, ledger: ShardedLedger
) -> None:
    elsewhere = on_shard(ledger, down=False)[0]
    with Projections.open(proxied_shards.url) as views:
        views.catch_up()
        before = (views.count_audit(), views.audit_rows(elsewhere), views.continuity())
        proxied_shards.cut()

        with pytest.raises(
            StorageUnavailable, match=f"127.0.0.1:{proxied_shards.proxy.port}/"
        ):
            views.rebuild()

        after = (views.count_audit(), views.audit_rows(elsewhere), views.continuity())
    assert after == before


def test_the_users_of_the_shards_still_reached_read_in_the_views(
    proxied_shards: ProxiedShards, ledger: ShardedLedger
) -> None:
    with Projections.open(proxied_shards.url) as views:
        views.catch_up()
        proxied_shards.cut()

        for user in on_shard(ledger, down=False):
            assert views.active_contexts(user) == ledger.active_contexts(user)
        with pytest.raises(StorageUnavailable):
            views.active_contexts(on_shard(ledger, down=True)[0])
