"""The caller's side of commands in its own transaction: an app with its own
table in the ledger's schema, and a connection of its own."""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

from ledger import ChangeFeed, LedgerEvent
from tests.helpers import dsn_and_schema

FEED_SECONDS = 30.0
Connection = psycopg.Connection[Any]


@dataclass(frozen=True)
class App:
    """The caller's connection and its table ``messages`` in the ledger's schema."""

    connection: Connection
    dsn: str
    schema: str

    @property
    def table(self) -> sql.Identifier:
        return sql.Identifier(self.schema, "messages")

    def insert(self, message_id: str) -> None:
        statement = sql.SQL("INSERT INTO {} (id) VALUES (%s)").format(self.table)
        self.connection.execute(statement, (message_id,))

    def stored(self) -> list[str]:
        """The app's committed rows, as another connection sees them."""
        query = sql.SQL("SELECT id FROM {} ORDER BY id").format(self.table)
        with psycopg.connect(self.dsn, autocommit=True) as other:
            return [row[0] for row in other.execute(query).fetchall()]


@contextmanager
def app_on(url: str) -> Iterator[App]:
    """The app on a ledger's PostgreSQL URL (the ledger's schema must exist)."""
    dsn, schema = dsn_and_schema(url)
    with psycopg.connect(dsn) as connection:
        app = App(connection, dsn, schema)
        connection.execute(
            sql.SQL("CREATE TABLE {} (id text PRIMARY KEY)").format(app.table)
        )
        connection.commit()
        yield app


def collect(feed: ChangeFeed, count: int) -> list[tuple[int, LedgerEvent]]:
    """The feed's next ``count`` changes (fails if they do not come)."""
    taken: list[tuple[int, LedgerEvent]] = []
    deadline = time.monotonic() + FEED_SECONDS
    while len(taken) < count:
        if time.monotonic() > deadline:
            pytest.fail(f"the feed gave {len(taken)} of {count} changes")
        taken.extend(feed.poll())
        if len(taken) < count:
            time.sleep(0.01)
    return taken


def kinds(events: list[LedgerEvent]) -> list[tuple[int, str, str]]:
    """Each event's version, kind and thread."""
    return [(e.version, e.kind, e.thread_id) for e in events]
