"""``ctxledger shards`` as an operator runs it: add, list, drain, open and move,
on the ledger's URL; a password given in any URL is used, never shown or stored."""

import json
import subprocess
from typing import Any

import pytest

from ledger import ContextLedger
from ledger._domain.contexts import user_aggregate_id
from ledger._sharded import ShardedLedger
from tests.helpers import cli_on
from tests.shard_sql import shard_sql

pytestmark = pytest.mark.postgres

PASSWORD = "Pw-s3cret-9"  # the test server trusts every local user: any password works


def _with_password(url: str) -> str:
    return url.replace("postgres@", f"postgres:{PASSWORD}@", 1)


def _listed(url: str) -> list[dict[str, Any]]:
    done = cli_on("shards", "list", "--json", url=url)
    assert done.returncode == 0, done.stderr
    rows: list[dict[str, Any]] = json.loads(done.stdout)
    return rows


def _stored_events(url: str) -> int:
    return int(shard_sql(url, "SELECT count(*) FROM ctxledger_events")[0][0])


def _output(done: subprocess.CompletedProcess[str]) -> str:
    return done.stdout + done.stderr


def _write(url: str, users: list[str]) -> dict[str, int | None]:
    with ContextLedger.open(url) as ledger:
        assert isinstance(ledger, ShardedLedger)
        for user in users:
            ledger.open_context(user, "t")
        return {user: ledger.shard_of(user) for user in users}


def test_shards_add_registers_a_database_as_the_next_shard(
    shard_urls: list[str],
) -> None:
    first = cli_on("shards", "add", shard_urls[1], url=shard_urls[0])
    second = cli_on("shards", "add", shard_urls[2], url=shard_urls[0])

    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("added shard 1: ")
    assert second.stdout.startswith("added shard 2: ")
    assert [(row["shard_id"], row["state"]) for row in _listed(shard_urls[0])] == [
        (0, "open"),
        (1, "open"),
        (2, "open"),
    ]


def test_shards_list_shows_each_shards_users_and_stored_events(
    sharded_url: str, shard_urls: list[str]
) -> None:
    routes = _write(sharded_url, [f"user-{n}" for n in range(20)])

    rows = _listed(sharded_url)

    assert [row["users"] for row in rows] == [
        list(routes.values()).count(shard) for shard in range(3)
    ]
    assert [row["events"] for row in rows] == [_stored_events(u) for u in shard_urls]


def test_shards_list_as_a_table_shows_every_shard(sharded_url: str) -> None:
    done = cli_on("shards", "list", url=sharded_url)

    assert done.returncode == 0, done.stderr
    for header in ("shard", "url", "state", "users", "events"):
        assert header in done.stdout
    assert done.stdout.count("open") == 3


def test_drain_stops_new_users_and_open_lets_them_in_again(
    sharded_url: str, shard_urls: list[str]
) -> None:
    drained = cli_on("shards", "drain", shard_urls[2], url=sharded_url)
    states_drained = [row["state"] for row in _listed(sharded_url)]
    reopened = cli_on("shards", "open", shard_urls[2], url=sharded_url)
    states_reopened = [row["state"] for row in _listed(sharded_url)]

    assert drained.returncode == 0, drained.stderr
    assert "shard 2" in drained.stdout
    assert "draining" in drained.stdout
    assert states_drained == ["open", "open", "draining"]
    assert reopened.returncode == 0, reopened.stderr
    assert states_reopened == ["open", "open", "open"]


def test_move_puts_a_users_events_on_the_target_shard_only(
    sharded_url: str, shard_urls: list[str]
) -> None:
    routes = _write(sharded_url, [f"user-{n}" for n in range(10)])
    user, source = next((u, s) for u, s in routes.items() if s != 2)

    done = cli_on("shards", "move", user, "--to", shard_urls[2], url=sharded_url)

    assert done.returncode == 0, done.stderr
    assert done.stdout == f"moved {user} from shard {source} to shard 2: 1 event(s)\n"
    assert "switch: " in done.stderr
    stream = user_aggregate_id(user)
    held = [
        shard_sql(
            url,
            "SELECT count(*) FROM ctxledger_events WHERE originator_id = %s",
            (stream,),
        )[0][0]
        for url in shard_urls
    ]
    assert held == [1 if shard == 2 else 0 for shard in range(3)]
    assert _write(sharded_url, [user]) == {user: 2}


def test_shards_list_counts_stored_events_after_a_move(
    sharded_url: str, shard_urls: list[str]
) -> None:
    routes = _write(sharded_url, [f"user-{n}" for n in range(10)])
    user = next(u for u, s in routes.items() if s == 0)
    moved = cli_on("shards", "move", user, "--to", shard_urls[1], url=sharded_url)
    assert moved.returncode == 0, moved.stderr

    rows = _listed(sharded_url)

    assert [row["events"] for row in rows] == [_stored_events(u) for u in shard_urls]


def test_no_shards_command_shows_a_password_given_in_a_url(
    shard_urls: list[str],
) -> None:
    ledger = _with_password(shard_urls[0])
    runs = [
        cli_on("shards", "add", _with_password(shard_urls[1]), url=ledger),
        cli_on("shards", "add", _with_password(shard_urls[2]), url=ledger),
        cli_on("shards", "add", _with_password(shard_urls[2]), url=ledger),
        cli_on("shards", "add", _with_password(shard_urls[0]), url=ledger),
        cli_on(
            "shards", "add", _unreachable(_with_password(shard_urls[1])), url=ledger
        ),
        cli_on("shards", "list", url=ledger),
        cli_on("shards", "list", "--json", url=ledger),
        cli_on("shards", "drain", _with_password(shard_urls[1]), url=ledger),
        cli_on("shards", "open", _with_password(shard_urls[1]), url=ledger),
    ]
    user = next(u for u, s in _write(ledger, ["a", "b", "c", "d"]).items() if s != 1)
    runs.append(
        cli_on(
            "shards", "move", user, "--to", _with_password(shard_urls[1]), url=ledger
        )
    )

    assert [done.returncode for done in runs] == [0, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    for done in runs:
        assert PASSWORD not in _output(done), done.args


def test_the_directory_stores_no_password(shard_urls: list[str]) -> None:
    ledger = _with_password(shard_urls[0])
    for shard_url in shard_urls[1:]:
        added = cli_on("shards", "add", _with_password(shard_url), url=ledger)
        assert added.returncode == 0, added.stderr
    _write(ledger, [f"user-{n}" for n in range(10)])

    stored = shard_sql(
        shard_urls[0],
        "SELECT row_to_json(s)::text FROM ctxledger_shards s "
        "UNION ALL SELECT row_to_json(u)::text FROM ctxledger_shard_users u",
    )

    assert len(stored) == 3 + 10
    assert not [row for row in stored if PASSWORD in row[0]]


def _unreachable(url: str) -> str:
    """``url`` with a password, on a port nothing listens on."""
    return _with_password(url).replace(":5432/", ":1/", 1)
