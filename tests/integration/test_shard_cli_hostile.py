"""``ctxledger shards`` given URLs it must refuse: each is a typed error on one
line that says what to do, and the directory is left as it was."""

from typing import Any

import pytest

from ledger import ContextLedger
from ledger._sharded import ShardedLedger
from tests.helpers import cli_on, one_line_error
from tests.shard_sql import shard_sql, table_names

pytestmark = pytest.mark.postgres


def _directory(url: str) -> list[Any]:
    """The shards and assignments in the directory at ``url`` (raw SQL)."""
    return shard_sql(
        url,
        "SELECT 'shard', shard_id, url, state FROM ctxledger_shards "
        "UNION ALL SELECT 'user', shard_id, stream_id::text, '' "
        "FROM ctxledger_shard_users ORDER BY 1, 2, 3",
    )


def _with_events(url: str) -> str:
    with ContextLedger.open(url) as ledger:
        ledger.open_context("alice", "t")
    return url


def _refused_add(url: str, shard_url: str) -> str:
    """The one-line LedgerConfigError of ``shards add shard_url`` on ``url``,
    checking that the directory did not change."""
    before = _directory(url)
    done = cli_on("shards", "add", shard_url, url=url)
    assert done.returncode == 1
    assert _directory(url) == before
    return one_line_error(done, "LedgerConfigError")


@pytest.mark.parametrize(
    ("shard_url", "said"),
    [
        ("sqlite:///shard.db", "is not a PostgreSQL URL"),
        ("memory://", "is not a PostgreSQL URL"),
        ("postgresql://postgres@127.0.0.1:notaport/db", "port"),
        ("postgresql://127.0.0.1:5432/db", "needs a user and a database"),
        ("postgresql://postgres@127.0.0.1:5432/db?schema=No-Such", "schema name"),
        ("postgresql://postgres@127.0.0.1:5432/db?flavour=x", "unknown PostgreSQL"),
        ("no url at all", "unsupported database URL"),
    ],
)
def test_adding_what_is_not_a_postgresql_database_url_is_refused(
    sharded_url: str, shard_url: str, said: str
) -> None:
    assert said in _refused_add(sharded_url, shard_url)


def test_adding_the_ledgers_own_database_is_refused(sharded_url: str) -> None:
    assert "the ledger's own database" in _refused_add(sharded_url, sharded_url)


def test_adding_the_ledgers_own_database_with_a_password_is_refused(
    sharded_url: str,
) -> None:
    own = sharded_url.replace("postgres@", "postgres:other@", 1)

    assert "the ledger's own database" in _refused_add(sharded_url, own)


def test_adding_the_ledgers_own_database_by_another_host_name_is_refused(
    sharded_url: str,
) -> None:
    alias = sharded_url.replace("@127.0.0.1:", "@localhost:", 1)

    assert "shard 0" in _refused_add(sharded_url, alias)


def test_adding_a_shard_again_is_refused(
    sharded_url: str, shard_urls: list[str]
) -> None:
    again = shard_urls[1].replace("postgres@", "postgres:another@", 1)

    assert "is already shard 1" in _refused_add(sharded_url, again)


def test_adding_a_shard_again_by_another_host_name_is_refused(
    sharded_url: str, shard_urls: list[str]
) -> None:
    alias = shard_urls[1].replace("@127.0.0.1:", "@localhost:", 1)

    assert "shard 1" in _refused_add(sharded_url, alias)


def test_adding_a_database_that_holds_events_is_refused(
    sharded_url: str, postgres_url: str
) -> None:
    said = _refused_add(sharded_url, _with_events(postgres_url))

    assert "already holds events" in said
    assert "ctxledger_moved_out" not in table_names(postgres_url)


def test_a_refused_first_add_leaves_no_directory_behind(
    postgres_url: str, shard_urls: list[str]
) -> None:
    ledger = _with_events(shard_urls[0])
    full = _with_events(postgres_url)

    done = cli_on("shards", "add", full, url=ledger)

    assert "already holds events" in one_line_error(done, "LedgerConfigError")
    assert "ctxledger_shards" not in table_names(ledger)
    with ContextLedger.open(ledger) as reopened:
        assert type(reopened) is ContextLedger


def test_an_unreachable_database_is_storage_unavailable_and_added_nowhere(
    sharded_url: str, shard_urls: list[str]
) -> None:
    before = _directory(sharded_url)
    missing = shard_urls[1].replace("_1?", "_gone?", 1)

    done = cli_on("shards", "add", missing, url=sharded_url)

    assert done.returncode == 1
    assert done.stderr.startswith("StorageUnavailable: ")
    assert _directory(sharded_url) == before


def test_shards_of_a_sqlite_ledger_are_refused(sqlite_url: str) -> None:
    done = cli_on("shards", "list", url=sqlite_url)

    assert "need a PostgreSQL ledger" in one_line_error(done, "LedgerConfigError")


def test_draining_a_database_that_is_not_a_shard_is_refused(
    sharded_url: str, postgres_url: str
) -> None:
    done = cli_on("shards", "drain", postgres_url, url=sharded_url)

    assert "is not a shard of this ledger" in one_line_error(done, "LedgerConfigError")


def test_draining_on_a_ledger_without_shards_is_refused(postgres_url: str) -> None:
    _with_events(postgres_url)

    done = cli_on("shards", "drain", postgres_url, url=postgres_url)

    assert "has no shards yet" in one_line_error(done, "LedgerConfigError")


def test_moving_a_user_to_a_database_that_is_not_a_shard_is_refused(
    sharded_url: str, postgres_url: str
) -> None:
    _with_events(sharded_url)

    done = cli_on("shards", "move", "alice", "--to", postgres_url, url=sharded_url)

    assert "is not a shard of this ledger" in one_line_error(done, "LedgerConfigError")


def test_moving_a_user_to_its_own_shard_is_refused(sharded_url: str) -> None:
    _with_events(sharded_url)
    with ContextLedger.open(sharded_url) as ledger:
        assert isinstance(ledger, ShardedLedger)
        home = ledger.shard_of("alice")
    shard_url = shard_sql(
        sharded_url, "SELECT url FROM ctxledger_shards WHERE shard_id = %s", (home,)
    )[0][0]

    done = cli_on("shards", "move", "alice", "--to", shard_url, url=sharded_url)

    assert "nothing to move" in one_line_error(done, "LedgerConfigError")


def test_moving_a_user_on_a_ledger_without_shards_is_refused(postgres_url: str) -> None:
    _with_events(postgres_url)

    done = cli_on("shards", "move", "alice", "--to", postgres_url, url=postgres_url)

    assert "has no shards" in one_line_error(done, "LedgerConfigError")


@pytest.mark.parametrize("command", ["drain", "open"])
def test_changing_a_shards_state_on_an_unreachable_ledger_is_storage_unavailable(
    shard_urls: list[str], command: str
) -> None:
    unreachable = shard_urls[0].replace(":5432/", ":1/", 1)

    done = cli_on("shards", command, shard_urls[1], url=unreachable)

    one_line_error(done, "StorageUnavailable")


def test_control_characters_in_a_shard_url_are_shown_escaped(sharded_url: str) -> None:
    hostile = sharded_url.replace("?schema=", "\x1b[2J\u202e?schema=", 1)

    done = cli_on("shards", "drain", hostile, url=sharded_url)

    said = one_line_error(done, "LedgerConfigError")
    assert "\\u001b[2J\\u202e" in said
    assert "\x1b" not in said
    assert "\u202e" not in said
