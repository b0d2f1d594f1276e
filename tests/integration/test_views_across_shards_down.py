"""One shard unreachable (its connections go through a TCP proxy the test cuts):
the views go on with the other shards' logs, and once it is back they catch up
with it by themselves."""

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import pytest

from ledger import ContextLedger, StorageUnavailable
from ledger._shard_admin import add_shard
from ledger._sharded import ShardedLedger
from projections import Projections, ShardViewStatus
from tests.helpers import CuttingProxy

pytestmark = pytest.mark.postgres

DOWN = 2
USERS = [f"user-{n}" for n in range(24)]
EQUAL: dict[str, list[str]] = {"active": [], "audit": [], "continuity": []}


@dataclass
class Deployment:
    url: str
    down_url: str
    proxy: CuttingProxy
    failures: list[StorageUnavailable] = field(default_factory=list)

    def cut(self) -> None:
        self.proxy.refuse = True
        self.proxy.cut_all()

    def restore(self) -> None:
        self.proxy.refuse = False

    def noted(self, failure: StorageUnavailable, pause: float) -> None:
        assert pause > 0
        self.failures.append(failure)


def _through(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{port}")
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.fixture
def deployment(shard_urls: list[str]) -> Iterator[Deployment]:
    """Three shards; shard 2 registered by the URL of a proxy in front of it."""
    target = urlsplit(shard_urls[DOWN])
    proxy = CuttingProxy((target.hostname or "127.0.0.1", target.port or 5432))
    down_url = _through(shard_urls[DOWN], proxy.port)
    add_shard(shard_urls[0], shard_urls[1])
    add_shard(shard_urls[0], down_url)
    yield Deployment(shard_urls[0], down_url, proxy)
    proxy.refuse = False
    proxy.close()


@pytest.fixture
def ledger(deployment: Deployment) -> Iterator[ShardedLedger]:
    with ContextLedger.open(deployment.url) as opened:
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
    deployment: Deployment, ledger: ShardedLedger
) -> None:
    assert on_shard(ledger, down=True)
    deployment.cut()

    with Projections.open(deployment.url) as views:
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
    deployment: Deployment, ledger: ShardedLedger
) -> None:
    with Projections.open(deployment.url) as views:
        views.catch_up()
    deployment.cut()
    stop = threading.Event()
    with (
        Projections.open(deployment.url) as follower,
        Projections.open(deployment.url) as reader,
    ):
        running = threading.Thread(
            target=follower.follow,
            args=(stop,),
            kwargs={"poll_seconds": 0.05, "on_failure": deployment.noted},
        )
        running.start()
        try:
            write(ledger, on_shard(ledger, down=False), thread="while-cut")
            reader.wait(reachable_heads(reader), timeout=30)
            deployment.restore()
            write(ledger, on_shard(ledger, down=True), thread="once-back")
            reader.wait(reader.heads(), timeout=60)
        finally:
            stop.set()
            running.join()
        found = reader.verify()
        audited = reader.count_audit()

    assert deployment.failures
    assert all(
        f"127.0.0.1:{deployment.proxy.port}/" in str(f) for f in deployment.failures
    )
    assert found == EQUAL
    assert audited == 2 * len(USERS) * 2


def test_a_rebuild_with_a_shard_cut_fails_naming_it_and_keeps_the_live_views(
    deployment: Deployment, ledger: ShardedLedger
) -> None:
    elsewhere = on_shard(ledger, down=False)[0]
    with Projections.open(deployment.url) as views:
        views.catch_up()
        before = (views.count_audit(), views.audit_rows(elsewhere), views.continuity())
        deployment.cut()

        with pytest.raises(
            StorageUnavailable, match=f"127.0.0.1:{deployment.proxy.port}/"
        ):
            views.rebuild()

        after = (views.count_audit(), views.audit_rows(elsewhere), views.continuity())
    assert after == before


def test_the_users_of_the_shards_still_reached_read_in_the_views(
    deployment: Deployment, ledger: ShardedLedger
) -> None:
    with Projections.open(deployment.url) as views:
        views.catch_up()
        deployment.cut()

        for user in on_shard(ledger, down=False):
            assert views.active_contexts(user) == ledger.active_contexts(user)
        with pytest.raises(StorageUnavailable):
            views.active_contexts(on_shard(ledger, down=True)[0])
