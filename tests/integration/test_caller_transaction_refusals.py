"""A connection the ledger may not append on is refused with a typed error before
anything is written, and the caller's transaction goes on (unless it was already
failed or closed)."""

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from ledger import ContextLedger, InvalidContextInput, LedgerConfigError
from ledger._sharded import ShardedLedger
from tests.caller_app import App, app_on, kinds
from tests.helpers import dsn_and_schema

pytestmark = pytest.mark.postgres


@pytest.fixture
def ledger(postgres_url: str) -> Iterator[ContextLedger]:
    with ContextLedger.open(postgres_url) as opened:
        opened.open_context("alice", "t0")
        yield opened


@pytest.fixture
def app(postgres_url: str, ledger: ContextLedger) -> Iterator[App]:
    with app_on(postgres_url) as opened:
        yield opened


def nothing_appended(ledger: ContextLedger) -> None:
    assert kinds(ledger.history("alice")) == [(1, "created", "t0")]


def goes_on(app: App) -> None:
    """The caller's transaction still takes its rows and commits them."""
    app.insert("after")
    app.connection.commit()
    assert app.stored() == ["after"]


def test_a_sqlite_ledger_refuses_any_connection_and_says_what_to_do(
    sqlite_url: str, app: App
) -> None:
    with ContextLedger.open(sqlite_url) as lite:
        with pytest.raises(LedgerConfigError, match=r"needs PostgreSQL.*request_id"):
            lite.open_context("alice", "t1", connection=app.connection)
        assert lite.history("alice") == []
    goes_on(app)


def test_a_connection_in_autocommit_outside_a_transaction_is_refused(
    ledger: ContextLedger, app: App
) -> None:
    app.connection.autocommit = True
    with pytest.raises(InvalidContextInput, match="autocommit"):
        ledger.open_context("alice", "t1", connection=app.connection)
    nothing_appended(ledger)
    app.insert("after")  # committed by itself, in autocommit
    assert app.stored() == ["after"]


def test_an_autocommit_connection_inside_a_transaction_block_is_accepted(
    ledger: ContextLedger, app: App
) -> None:
    app.connection.autocommit = True
    with app.connection.transaction():
        app.insert("m1")
        ledger.open_context("alice", "t1", connection=app.connection)
    with app.connection.transaction():
        app.insert("m2")
        ledger.open_context("alice", "t2", connection=app.connection)
        raise psycopg.Rollback  # ends the block, rolled back

    assert app.stored() == ["m1"]
    assert kinds(ledger.history("alice")) == [
        (1, "created", "t0"),
        (2, "created", "t1"),
    ]


def test_a_connection_in_a_failed_transaction_is_refused_until_rolled_back(
    ledger: ContextLedger, app: App
) -> None:
    app.insert("m1")
    with pytest.raises(psycopg.errors.UniqueViolation):
        app.insert("m1")
    with pytest.raises(InvalidContextInput, match="failed transaction"):
        ledger.open_context("alice", "t1", connection=app.connection)
    nothing_appended(ledger)

    app.connection.rollback()
    ledger.open_context("alice", "t1", connection=app.connection)
    goes_on(app)
    assert kinds(ledger.history("alice"))[-1] == (2, "created", "t1")


def test_a_closed_connection_is_refused(ledger: ContextLedger, app: App) -> None:
    app.connection.close()
    with pytest.raises(InvalidContextInput, match="closed"):
        ledger.open_context("alice", "t1", connection=app.connection)
    nothing_appended(ledger)


def test_a_connection_to_another_database_is_refused(
    postgres_url: str, ledger: ContextLedger, app: App
) -> None:
    dsn, _ = dsn_and_schema(postgres_url)
    base, _, _ = dsn.rpartition("/")
    with psycopg.connect(f"{base}/postgres") as other:
        with pytest.raises(LedgerConfigError, match="another database"):
            ledger.open_context("alice", "t1", connection=other)
        other.execute("SELECT 1")  # its transaction goes on
    nothing_appended(ledger)


@pytest.fixture
def twin_url(postgres_url: str) -> Iterator[str]:
    """A ledger in a database of its own, in a schema of the same name."""
    dsn, schema = dsn_and_schema(postgres_url)
    base, _, _ = dsn.rpartition("/")
    name = f"ctxl_twin_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with ContextLedger.open(f"{base}/{name}?schema={schema}") as twin:
            twin.open_context("alice", "t0")
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)
                )
            )


def test_a_connection_to_another_ledger_of_the_same_schema_name_is_refused(
    ledger: ContextLedger, app: App, twin_url: str
) -> None:
    with psycopg.connect(twin_url) as other:
        with pytest.raises(LedgerConfigError, match="another database or schema"):
            ledger.clear_user("alice", connection=other)
        other.execute("SELECT 1")
    nothing_appended(ledger)
    goes_on(app)


def test_something_that_is_not_a_connection_is_refused(
    ledger: ContextLedger, app: App
) -> None:
    cursor = app.connection.cursor()
    for wrong in ("postgresql://", cursor, object()):
        with pytest.raises(InvalidContextInput, match="not a psycopg connection"):
            ledger.open_context("alice", "t1", connection=wrong)  # type: ignore[arg-type]
    nothing_appended(ledger)
    goes_on(app)


def test_an_async_connection_is_refused_by_the_sync_ledger(
    postgres_url: str, ledger: ContextLedger
) -> None:
    dsn, _ = dsn_and_schema(postgres_url)

    async def give_async() -> None:
        async with await psycopg.AsyncConnection.connect(dsn) as connection:
            await connection.execute("SELECT 1")
            wrong: Any = connection
            with pytest.raises(InvalidContextInput, match="AsyncContextLedger"):
                ledger.open_context("alice", "t1", connection=wrong)
            await connection.execute("SELECT 1")  # its transaction goes on

    asyncio.run(give_async())
    nothing_appended(ledger)


def test_on_shards_only_a_connection_to_the_users_shard_is_accepted(
    sharded_url: str,
) -> None:
    with ContextLedger.open(sharded_url) as sharded:
        assert isinstance(sharded, ShardedLedger)
        sharded.open_context("alice", "t0")
        home = sharded.shard_of("alice")
        assert home is not None
        databases = {s.shard_id: s.url.partition("?")[0] for s in sharded.shards()}
        wrong = next(shard for shard in databases if shard != home)
        refused = pytest.raises(LedgerConfigError, match=f"shard {home}'s database")
        with psycopg.connect(databases[wrong]) as other, refused:
            sharded.open_context("alice", "t1", connection=other)
        with psycopg.connect(databases[home]) as own:
            sharded.open_context("alice", "t1", connection=own)
            own.commit()

        assert kinds(sharded.history("alice")) == [
            (1, "created", "t0"),
            (2, "created", "t1"),
        ]
