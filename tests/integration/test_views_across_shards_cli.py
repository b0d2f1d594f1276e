"""The view commands of ctxledger on the URL of a ledger over three shards."""

import json
import signal
import subprocess
from collections.abc import Iterator

import pytest

from ledger import ContextLedger
from ledger._sharded import ShardedLedger
from tests.helpers import CTXLEDGER, chat, cli_on, wait_until

pytestmark = pytest.mark.postgres

USERS = 9
VIEWS = ("active", "audit", "continuity")


@pytest.fixture
def ledger(sharded_url: str) -> Iterator[ShardedLedger]:
    with ContextLedger.open(sharded_url) as opened:
        assert isinstance(opened, ShardedLedger)
        chat(opened, users=USERS, messages=4)
        yield opened


def events(ledger: ShardedLedger) -> int:
    return sum(ledger.shard(shard).chain_size() for shard in ledger.shard_ids())


def status(url: str) -> list[dict[str, object]]:
    result = cli_on("status", "--json", url=url)
    assert result.returncode == 0, result.stderr
    rows: list[dict[str, object]] = json.loads(result.stdout)
    return rows


def caught_up(rows: list[dict[str, object]]) -> bool:
    return all(row["lag"] == 0 and row["position"] != 0 for row in rows)


def test_project_applies_every_shards_events_and_status_shows_each_shard(
    ledger: ShardedLedger, sharded_url: str
) -> None:
    projected = cli_on("project", url=sharded_url)

    total = events(ledger)
    assert projected.returncode == 0, projected.stderr
    assert projected.stdout.strip() == (
        f"events applied: active +{total}, audit +{total}, continuity +{total}"
    )
    rows = status(sharded_url)
    assert [(row["view"], row["shard"]) for row in rows] == [
        (view, shard) for view in VIEWS for shard in (0, 1, 2)
    ]
    assert all(row["position"] == row["head"] and row["lag"] == 0 for row in rows)
    assert all(row["reachable"] for row in rows)


def test_status_as_a_table_has_a_shard_column(
    ledger: ShardedLedger, sharded_url: str
) -> None:
    cli_on("project", url=sharded_url)

    result = cli_on("status", url=sharded_url)

    assert result.returncode == 0, result.stderr
    assert "shard" in result.stdout.splitlines()[1]


def test_verify_finds_the_views_equal_to_every_shard_after_a_rebuild(
    ledger: ShardedLedger, sharded_url: str
) -> None:
    cli_on("project", url=sharded_url)

    rebuilt = cli_on("rebuild", url=sharded_url)
    verified = cli_on("verify", url=sharded_url)

    total = events(ledger)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert [line for line in rebuilt.stdout.splitlines() if "rebuilt" in line] == [
        f"rebuilt {view}: {total} event(s) applied" for view in VIEWS
    ]
    assert verified.returncode == 0, verified.stdout
    assert verified.stdout.splitlines() == [f"{v}: equal to the replay" for v in VIEWS]


def test_verify_of_views_behind_a_shard_says_which_and_exits_1(
    ledger: ShardedLedger, sharded_url: str
) -> None:
    cli_on("project", url=sharded_url)
    user = next(f"u{n}" for n in range(USERS) if ledger.shard_of(f"u{n}") == 2)
    ledger.open_context(user, "late")

    verified = cli_on("verify", url=sharded_url)

    assert verified.returncode == 1
    assert "shard 2: behind its log by 1 event(s)" in verified.stdout


def test_the_readers_show_every_shards_users(
    ledger: ShardedLedger, sharded_url: str
) -> None:
    cli_on("project", url=sharded_url)

    for n in range(USERS):
        user = f"u{n}"
        audit = cli_on("audit", user, "--format", "json", url=sharded_url)
        active = cli_on("active", "--user", user, "--json", url=sharded_url)
        figures = cli_on("continuity", "--user", user, "--json", url=sharded_url)
        assert audit.returncode == active.returncode == figures.returncode == 0
        kinds = [row["kind"] for row in json.loads(audit.stdout)]
        assert kinds == [event.kind for event in ledger.history(user)]
        assert len(json.loads(active.stdout)) == len(ledger.active_contexts(user))
        assert json.loads(figures.stdout)["created"] == kinds.count("created")


def test_project_follow_stops_on_sigterm_and_says_where_on_each_shard(
    ledger: ShardedLedger, sharded_url: str
) -> None:
    follower = subprocess.Popen(
        [CTXLEDGER, "--db", sharded_url, "project", "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: caught_up(status(sharded_url)), "the follower")
    finally:
        follower.send_signal(signal.SIGTERM)
        out, err = follower.communicate(timeout=60)

    heads = {int(str(r["shard"])): r["head"] for r in status(sharded_url)}
    assert follower.returncode == 0, err
    assert out.strip().splitlines()[-1] == (
        f"stopped at positions shard 0: {heads[0]}, shard 1: {heads[1]}, "
        f"shard 2: {heads[2]}"
    )
