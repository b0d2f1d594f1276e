"""A ledger on SQLite or on one PostgreSQL database is the plain ledger it always
was: no directory, no guard, no shard tables, whatever is called on it."""

import asyncio

import pytest

from ledger import AsyncContextLedger, ContextLedger
from tests.helpers import cli_on, execute_sql, table_names

SHARD_TABLES = {
    "ctxledger_shards",
    "ctxledger_shard_users",
    "ctxledger_moved_out",
    "ctxledger_moved_in",
}


def _use(url: str) -> None:
    with ContextLedger.open(url) as ledger:
        context = ledger.open_context("alice", "t")
        ledger.update_context("alice", context.context_id, metadata={"n": 1})
        ledger.expire_due()
        assert ledger.verify_chain().holds


def test_open_returns_a_plain_ledger_on_sqlite_and_one_postgresql_database(
    durable_url: str,
) -> None:
    _use(durable_url)

    with ContextLedger.open(durable_url) as ledger:
        kind = type(ledger)

    assert kind is ContextLedger


def test_the_async_ledger_wraps_a_plain_ledger_on_one_database(
    durable_url: str,
) -> None:
    _use(durable_url)

    async def opened_kind() -> type:
        async with AsyncContextLedger.open(durable_url) as ledger:
            return type(await ledger.opened())

    assert asyncio.run(opened_kind()) is ContextLedger


def test_using_a_single_database_creates_no_shard_table(durable_url: str) -> None:
    _use(durable_url)

    assert table_names(durable_url) & SHARD_TABLES == set()


@pytest.mark.postgres
def test_a_single_postgresql_database_has_no_guard_on_its_events(
    postgres_url: str,
) -> None:
    _use(postgres_url)

    triggers = execute_sql(
        postgres_url,
        "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal "
        "AND tgrelid = to_regclass({p})",
        (f'"{postgres_url.rpartition("schema=")[2]}"."ctxledger_events"',),
    )

    assert triggers == []


@pytest.mark.postgres
def test_listing_shards_of_one_database_shows_it_alone_and_creates_nothing(
    postgres_url: str,
) -> None:
    _use(postgres_url)

    done = cli_on("shards", "list", "--json", url=postgres_url)

    assert done.returncode == 0, done.stderr
    assert '"shard_id": 0' in done.stdout
    assert '"shard_id": 1' not in done.stdout
    assert table_names(postgres_url) & SHARD_TABLES == set()
