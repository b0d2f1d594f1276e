"""One shard unreachable (its connections go through a TCP proxy the test cuts):
its users get StorageUnavailable, every other user goes on, calls across users run
on the others and then name the failed shard; back, it works without reopening."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from ledger import ContextLedger, StorageUnavailable
from ledger._sharded import ShardedLedger
from tests.helpers import cli_on
from tests.shard_proxy import DOWN, ProxiedShards

pytestmark = pytest.mark.postgres

USERS = [f"user-{n}" for n in range(30)]


class Clock:
    """A clock the test moves (the ledger's event times and expiries read it)."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ledger(proxied_shards: ProxiedShards, clock: Clock) -> Iterator[ShardedLedger]:
    with ContextLedger.open(proxied_shards.url, clock=clock) as opened:
        assert isinstance(opened, ShardedLedger)
        for user in USERS:
            opened.open_context(user, "t", ttl_seconds=60)
        yield opened


def _on(ledger: ShardedLedger, down: bool) -> list[str]:
    return [user for user in USERS if (ledger.shard_of(user) == DOWN) == down]


def test_writes_of_the_unreachable_shards_users_get_storage_unavailable(
    proxied_shards: ProxiedShards, ledger: ShardedLedger
) -> None:
    cut_off = _on(ledger, down=True)[0]
    proxied_shards.cut()

    with pytest.raises(StorageUnavailable, match="failed"):
        ledger.open_context(cut_off, "another-thread")


def test_reads_of_the_unreachable_shards_users_get_storage_unavailable(
    proxied_shards: ProxiedShards, ledger: ShardedLedger
) -> None:
    cut_off = _on(ledger, down=True)[0]
    proxied_shards.cut()

    with pytest.raises(StorageUnavailable, match="failed"):
        ledger.get_context(cut_off, "t")


def test_every_other_users_writes_go_on_while_one_shard_is_down(
    proxied_shards: ProxiedShards, ledger: ShardedLedger
) -> None:
    others = _on(ledger, down=False)
    proxied_shards.cut()

    reused = [ledger.open_context(user, "t").reuse_count for user in others]

    assert {ledger.shard_of(user) for user in others} == {0, 1}
    assert reused == [1] * len(others)


def test_expire_due_expires_on_the_other_shards_then_names_the_failed_one(
    proxied_shards: ProxiedShards, ledger: ShardedLedger, clock: Clock
) -> None:
    others = _on(ledger, down=False)
    proxied_shards.cut()
    clock.now += timedelta(minutes=5)

    with pytest.raises(StorageUnavailable) as failed:
        ledger.expire_due()

    assert f"shard(s) {DOWN} failed" in " ".join(failed.value.__notes__)
    last = [ledger.history(user)[-1].kind for user in others]
    assert last == ["expired"] * len(others)


def test_verify_chain_checks_the_other_shards_then_names_the_failed_one(
    proxied_shards: ProxiedShards, ledger: ShardedLedger
) -> None:
    proxied_shards.cut()

    with pytest.raises(StorageUnavailable) as failed:
        ledger.verify_chain()

    assert f"verify_chain ran on 2 other shard(s); shard(s) {DOWN} failed" in (
        " ".join(failed.value.__notes__)
    )


def test_a_shard_back_works_again_without_reopening_the_ledger(
    proxied_shards: ProxiedShards, ledger: ShardedLedger
) -> None:
    cut_off = _on(ledger, down=True)
    proxied_shards.cut()
    with pytest.raises(StorageUnavailable):
        ledger.open_context(cut_off[0], "t")

    proxied_shards.restore()
    reused = [ledger.open_context(user, "t").reuse_count for user in cut_off]

    assert reused == [1] * len(cut_off)
    assert ledger.verify_chain().holds
    assert ledger.expire_due() == 0


def test_shards_list_shows_the_unreachable_shard_and_the_others(
    proxied_shards: ProxiedShards, ledger: ShardedLedger
) -> None:
    proxied_shards.cut()

    done = cli_on("shards", "list", "--json", url=proxied_shards.url)

    assert done.returncode == 0, done.stderr
    assert '"state": "unreachable"' in done.stdout
    assert done.stdout.count('"state": "open"') == 2


def test_shards_list_as_a_table_notes_the_unreachable_shard(
    proxied_shards: ProxiedShards, ledger: ShardedLedger
) -> None:
    proxied_shards.cut()

    done = cli_on("shards", "list", url=proxied_shards.url)

    assert done.returncode == 0, done.stderr
    assert "unreachable" in done.stdout
    assert f"shard(s) {DOWN} could not be read" in done.stderr
