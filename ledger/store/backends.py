"""PostgreSQL set-up that the library leaves to its users.

Processes that open one ledger at the same moment would race on creating the
schema, tables and types (PostgreSQL answers "tuple concurrently updated"), so
set-up runs under an advisory lock per schema.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql


@contextmanager
def exclusive_setup(settings: dict[str, str]) -> Iterator[None]:
    """Holds the schema's set-up lock, with the schema created, while the body runs."""
    schema = settings["POSTGRES_SCHEMA"]
    with psycopg.connect(
        dbname=settings["POSTGRES_DBNAME"],
        host=settings["POSTGRES_HOST"],
        port=settings["POSTGRES_PORT"],
        user=settings["POSTGRES_USER"],
        password=settings["POSTGRES_PASSWORD"],
        connect_timeout=int(settings["POSTGRES_CONNECT_TIMEOUT"]),
        autocommit=True,
    ) as connection:
        connection.execute(
            "SELECT pg_advisory_lock(hashtext(%s))", (f"ctxledger setup {schema}",)
        )
        connection.execute(
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
        )
        yield
        # Closing the connection releases the advisory lock.
