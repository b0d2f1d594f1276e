"""PostgreSQL: the shared store of many processes (what differs from the shared
``Backend``: the dialect and schema, the set-up lock, the readers' own pool, the
safe head's recorder, the tracking table)."""

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar

import psycopg
from eventsourcing.persistence import ApplicationRecorder, TrackingRecorder
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.utils import Environment
from psycopg import sql

from ledger._store.backends import (
    READER_CONNECTIONS,
    VIEW_TRACKING_TABLE,
    Backend,
    Dialect,
    checked_identifier,
)
from ledger._store.key_sql import SQLKeyTable
from ledger._store.keys import KEYS_TABLE, KeyStore, MasterKey, SQLKeyStore
from ledger._store.postgres_log import CONNECT_TIMEOUT_SETTING, PostgresLogFactory


class PostgresDialect:
    types: ClassVar[dict[str, str]] = {
        "text": "TEXT",
        "int": "BIGINT",
        "real": "DOUBLE PRECISION",
        "time": "TIMESTAMPTZ",
    }

    def __init__(self, schema: str) -> None:
        self.schema = checked_identifier(schema)

    def table(self, name: str) -> str:
        return f'"{self.schema}"."{checked_identifier(name)}"'

    def statement(self, text: str) -> str:
        return text.replace("?", "%s")

    def time_param(self, at: datetime | None) -> datetime | None:
        return at

    def time_value(self, stored: Any) -> datetime | None:
        return None if stored is None else stored.astimezone(UTC)

    def lock(self, cursor: Any, key: str) -> None:
        cursor.execute(
            "SELECT pg_advisory_xact_lock(hashtext(%s))", (f"ctxledger view {key}",)
        )

    def snapshot(self, cursor: Any) -> None:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")

    def row(self, stored: Any) -> tuple[Any, ...]:
        return tuple(stored.values())

    def exists(self, cursor: Any, name: str) -> bool:
        cursor.execute("SELECT to_regclass(%s) AS found", (self.table(name),))
        return cursor.fetchone()["found"] is not None

    def columns(self, cursor: Any, name: str) -> set[str]:
        """The column names of a table (none if it does not exist)."""
        cursor.execute(
            "SELECT column_name AS name FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s",
            (self.schema, name),
        )
        return {row["name"] for row in cursor.fetchall()}

    def insert(
        self, cursor: Any, table: str, columns: Sequence[str], rows: Sequence[Any]
    ) -> None:
        """Inserts many rows with COPY: one stream to the server, not a statement
        per row."""
        with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)


class PostgresBackend(Backend):
    events_table: ClassVar[str] = "ctxledger_events"
    snapshots_table: ClassVar[str] = "ctxledger_snapshots"

    def key_store(self, datastore: Any, master_key: MasterKey | None) -> KeyStore:
        table = PostgresKeyTable(
            datastore, self._table(KEYS_TABLE), self.dialect().statement
        )
        return SQLKeyStore(table, master_key)

    @property
    def schema(self) -> str:
        return self.storage.settings["POSTGRES_SCHEMA"]

    def _connect(self) -> psycopg.Connection[Any]:
        settings = self.storage.settings
        return psycopg.connect(
            dbname=settings["POSTGRES_DBNAME"],
            host=settings["POSTGRES_HOST"],
            port=settings["POSTGRES_PORT"],
            user=settings["POSTGRES_USER"],
            password=settings["POSTGRES_PASSWORD"],
            connect_timeout=int(settings[CONNECT_TIMEOUT_SETTING]),
            autocommit=True,
        )

    def exists(self) -> bool:
        with self._connect() as connection:
            row = connection.execute(
                "SELECT to_regclass(%s) IS NOT NULL",
                (self._table(self.events_table),),
            ).fetchone()
        return bool(row and row[0])

    @contextmanager
    def setup_lock(self) -> Iterator[None]:
        """Processes that open one ledger at the same moment would race on creating
        the schema, tables and types (PostgreSQL answers "tuple concurrently
        updated"), so set-up runs under an advisory lock per schema."""
        with self._connect() as connection:
            connection.execute(
                "SELECT pg_advisory_lock(hashtext(%s))",
                (f"ctxledger setup {self.schema}",),
            )
            connection.execute(
                sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                    sql.Identifier(self.schema)
                )
            )
            yield
            # Closing the connection releases the advisory lock.

    def dialect(self) -> Dialect:
        return PostgresDialect(self.schema)

    def check_connections(self, recorders: Iterable[ApplicationRecorder]) -> None:
        for recorder in recorders:
            recorder.datastore.pool.check()  # type: ignore[attr-defined]

    def log_reader(
        self, recorder: ApplicationRecorder, name: str, settings: Mapping[str, str]
    ) -> ApplicationRecorder:
        """A recorder of the same log on a pool of its own (opened on first use,
        at most READER_CONNECTIONS): a reader waiting at the safe head for another
        session's transaction holds one of these, never a connection that commands
        need."""
        own = {
            **settings,
            "POSTGRES_POOL_SIZE": "1",
            "POSTGRES_MAX_OVERFLOW": str(READER_CONNECTIONS - 1),
            "CREATE_TABLE": "n",
        }
        return PostgresLogFactory(Environment(name, own)).application_recorder()

    def tracking(self, datastore: Any) -> tuple[TrackingRecorder, str]:
        recorder = PostgresTrackingRecorder(
            datastore, tracking_table_name=VIEW_TRACKING_TABLE
        )
        return recorder, self._table(self.tracking_table)


class PostgresKeyTable(SQLKeyTable):
    """The key table in a PostgreSQL schema: a migration locks it, so no key row
    is added or changed meanwhile."""

    blob: ClassVar[str] = "BYTEA"
    lock_for_migration: ClassVar[str | None] = (
        "LOCK TABLE {table} IN SHARE ROW EXCLUSIVE MODE"
    )
