"""One shard unreachable (its connections go through a TCP proxy the test cuts):
its users get StorageUnavailable, every other user goes on, calls across users run
on the others and then name the failed shard; back, it works without reopening."""

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit, urlunsplit

import pytest

from ledger import ContextLedger, StorageUnavailable
from ledger._shard_admin import add_shard
from ledger._sharded import ShardedLedger
from tests.helpers import CuttingProxy, cli_on

pytestmark = pytest.mark.postgres

USERS = [f"user-{n}" for n in range(30)]
DOWN = 2


class Clock:
    """A clock the test moves (the ledger's event times and expiries read it)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Deployment:
    url: str
    proxy: CuttingProxy
    clock: Clock

    def open(self) -> ShardedLedger:
        ledger = ContextLedger.open(self.url, clock=self.clock)
        assert isinstance(ledger, ShardedLedger)
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
    yield Deployment(shard_urls[0], proxy, Clock())
    proxy.refuse = False
    proxy.close()


@pytest.fixture
def ledger(deployment: Deployment) -> Iterator[ShardedLedger]:
    with deployment.open() as opened:
        for user in USERS:
            opened.open_context(user, "t", ttl_seconds=60)
        yield opened


def _on(ledger: ShardedLedger, down: bool) -> list[str]:
    return [user for user in USERS if (ledger.shard_of(user) == DOWN) == down]


def test_writes_of_the_unreachable_shards_users_get_storage_unavailable(
    deployment: Deployment, ledger: ShardedLedger
) -> None:
    cut_off = _on(ledger, down=True)[0]
    deployment.cut()

    with pytest.raises(StorageUnavailable, match="failed"):
        ledger.open_context(cut_off, "another-thread")


def test_reads_of_the_unreachable_shards_users_get_storage_unavailable(
    deployment: Deployment, ledger: ShardedLedger
) -> None:
    cut_off = _on(ledger, down=True)[0]
    deployment.cut()

    with pytest.raises(StorageUnavailable, match="failed"):
        ledger.get_context(cut_off, "t")


def test_every_other_users_writes_go_on_while_one_shard_is_down(
    deployment: Deployment, ledger: ShardedLedger
) -> None:
    others = _on(ledger, down=False)
    deployment.cut()

    reused = [ledger.open_context(user, "t").reuse_count for user in others]

    assert {ledger.shard_of(user) for user in others} == {0, 1}
    assert reused == [1] * len(others)


def test_expire_due_expires_on_the_other_shards_then_names_the_failed_one(
    deployment: Deployment, ledger: ShardedLedger
) -> None:
    others = _on(ledger, down=False)
    deployment.cut()
    deployment.clock.now += timedelta(minutes=5)

    with pytest.raises(StorageUnavailable) as failed:
        ledger.expire_due()

    assert f"shard(s) {DOWN} failed" in " ".join(failed.value.__notes__)
    last = [ledger.history(user)[-1].kind for user in others]
    assert last == ["expired"] * len(others)


def test_verify_chain_checks_the_other_shards_then_names_the_failed_one(
    deployment: Deployment, ledger: ShardedLedger
) -> None:
    deployment.cut()

    with pytest.raises(StorageUnavailable) as failed:
        ledger.verify_chain()

    assert f"verify_chain ran on 2 other shard(s); shard(s) {DOWN} failed" in (
        " ".join(failed.value.__notes__)
    )


def test_a_shard_back_works_again_without_reopening_the_ledger(
    deployment: Deployment, ledger: ShardedLedger
) -> None:
    cut_off = _on(ledger, down=True)
    deployment.cut()
    with pytest.raises(StorageUnavailable):
        ledger.open_context(cut_off[0], "t")

    deployment.restore()
    reused = [ledger.open_context(user, "t").reuse_count for user in cut_off]

    assert reused == [1] * len(cut_off)
    assert ledger.verify_chain().holds
    assert ledger.expire_due() == 0


def test_shards_list_shows_the_unreachable_shard_and_the_others(
    deployment: Deployment, ledger: ShardedLedger
) -> None:
    deployment.cut()

    done = cli_on("shards", "list", "--json", url=deployment.url)

    assert done.returncode == 0, done.stderr
    assert '"state": "unreachable"' in done.stdout
    assert done.stdout.count('"state": "open"') == 2


def test_shards_list_as_a_table_notes_the_unreachable_shard(
    deployment: Deployment, ledger: ShardedLedger
) -> None:
    deployment.cut()

    done = cli_on("shards", "list", url=deployment.url)

    assert done.returncode == 0, done.stderr
    assert "unreachable" in done.stdout
    assert f"shard(s) {DOWN} could not be read" in done.stderr
