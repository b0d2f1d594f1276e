"""AsyncContextLedger's commands in the caller's transaction: on a psycopg
AsyncConnection (its statements run on the caller's loop while the task awaits),
and on a sync Connection too; the caller's commit or rollback decides."""

import asyncio
from collections.abc import Coroutine
from typing import Any

import psycopg
import pytest
from psycopg import sql

from ledger import AsyncContextLedger
from tests.caller_app import app_on, kinds
from tests.helpers import dsn_and_schema

pytestmark = pytest.mark.postgres


def run(coroutine: Coroutine[Any, Any, None]) -> None:
    asyncio.run(coroutine)


async def stored(dsn: str, table: sql.Identifier) -> list[str]:
    query = sql.SQL("SELECT id FROM {} ORDER BY id").format(table)
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as other:
        cursor = await other.execute(query)
        return [row[0] for row in await cursor.fetchall()]


def test_an_async_connections_commit_and_rollback_decide_the_events(
    postgres_url: str,
) -> None:
    dsn, schema = dsn_and_schema(postgres_url)
    table = sql.Identifier(schema, "messages")
    insert = sql.SQL("INSERT INTO {} (id) VALUES (%s)").format(table)

    async def scenario() -> None:
        async with AsyncContextLedger.open(postgres_url) as ledger:
            await ledger.history("alice")  # the ledger makes its schema
            with app_on(postgres_url):  # the app's table
                pass
            async with await psycopg.AsyncConnection.connect(dsn) as connection:
                given = connection
                async with connection.transaction():
                    await connection.execute(insert, ("m1",))
                    opened = await ledger.open_context(
                        "alice", "t1", request_id="m1", connection=given
                    )
                    repeat = await ledger.open_context(
                        "alice", "t1", request_id="m1", connection=given
                    )
                    assert await ledger.get_context("alice", "t1") is None
                assert repeat == opened
                assert await ledger.get_context("alice", "t1") == opened

                async with connection.transaction():
                    await connection.execute(insert, ("m2",))
                    await ledger.update_context(
                        "alice",
                        opened.context_id,
                        metadata={"a": 1},
                        connection=given,
                    )
                    await ledger.clear_user("alice", connection=given)
                    raise psycopg.Rollback

                async with connection.transaction():
                    await connection.execute(insert, ("m3",))
                    await ledger.clear_context(
                        "alice", opened.context_id, connection=given
                    )

            assert await stored(dsn, table) == ["m1", "m3"]
            history = await ledger.history("alice")
            assert kinds(history) == [(1, "created", "t1"), (2, "cleared", "t1")]

    run(scenario())


def test_a_sync_connection_works_through_the_async_ledger(postgres_url: str) -> None:
    dsn, _ = dsn_and_schema(postgres_url)

    async def scenario() -> None:
        async with AsyncContextLedger.open(postgres_url) as ledger:
            with psycopg.connect(dsn) as connection:
                opened = await ledger.open_context("bob", "t1", connection=connection)
                connection.commit()
                await ledger.update_context(
                    "bob", opened.context_id, metadata={"b": 1}, connection=connection
                )
                connection.rollback()
                cleared = await ledger.clear_user("bob", connection=connection)
                connection.commit()

            assert cleared == 1
            history = await ledger.history("bob")
            assert kinds(history) == [(1, "created", "t1"), (2, "cleared", "t1")]

    run(scenario())


def test_two_async_callers_in_their_own_transactions_both_apply_in_order(
    postgres_url: str,
) -> None:
    dsn, _ = dsn_and_schema(postgres_url)

    async def caller(ledger: AsyncContextLedger, thread: str) -> None:
        async with (
            await psycopg.AsyncConnection.connect(dsn) as connection,
            connection.transaction(),
        ):
            await ledger.open_context("carol", thread, connection=connection)

    async def scenario() -> None:
        async with AsyncContextLedger.open(postgres_url) as ledger:
            await asyncio.gather(*(caller(ledger, f"t{n}") for n in range(4)))
            history = await ledger.history("carol")
            assert [e.version for e in history] == [1, 2, 3, 4]
            assert sorted(e.thread_id for e in history) == ["t0", "t1", "t2", "t3"]

    run(scenario())
