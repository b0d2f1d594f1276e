"""SQL on a shard's database as an operator runs it, for the shard tests."""

from typing import Any

import psycopg
from psycopg import sql

from ledger._store.urls import storage_for


def shard_sql(url: str, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Runs ``statement`` in the schema of the PostgreSQL ledger URL ``url`` (read
    by the ledger's own parser, so any URL option may follow) on a connection of
    the test's own; the rows a query selects."""
    settings = storage_for(url).settings
    with psycopg.connect(
        dbname=settings["POSTGRES_DBNAME"],
        host=settings["POSTGRES_HOST"],
        port=settings["POSTGRES_PORT"],
        user=settings["POSTGRES_USER"],
        password=settings["POSTGRES_PASSWORD"],
        autocommit=True,
    ) as connection:
        schema = sql.Identifier(settings["POSTGRES_SCHEMA"])
        connection.execute(sql.SQL("SET search_path TO {}").format(schema))
        cursor = connection.execute(statement.encode(), params)
        return cursor.fetchall() if cursor.description else []


def table_names(url: str) -> set[str]:
    """The tables in the schema of the PostgreSQL ledger URL ``url``."""
    rows = shard_sql(
        url, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
    )
    return {str(row[0]) for row in rows}
