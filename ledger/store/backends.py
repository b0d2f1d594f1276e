"""The one place that knows each backend: SQLite, PostgreSQL and memory.

What differs between them and the library leaves to its users lives here: whether a
ledger already exists at a URL, the set-up lock, the SQL dialect of the tables kept
beside the events, the tracking table, how far the log may be read (its safe head),
and the few queries the library has no call for.
"""

import re
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol
from uuid import UUID

import psycopg
from eventsourcing.persistence import (
    ApplicationRecorder,
    Notification,
    TrackingRecorder,
)
from eventsourcing.postgres import PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteTrackingRecorder
from eventsourcing.utils import Environment
from psycopg import sql

from ledger.store.erasure_marks import ErasureMarks, SQLErasureMarks
from ledger.store.keys import (
    KEYS_TABLE,
    KeyStore,
    MasterKey,
    MemoryKeyStore,
    SQLKeyStore,
)
from ledger.store.postgres_log import (
    CONNECT_TIMEOUT_SETTING,
    SAFE_HEAD_TIMEOUT_SECONDS,
    ParallelPostgresRecorder,
    PostgresLogFactory,
)
from ledger.store.urls import Storage

EVENTS_TABLE = {"sqlite": "stored_events", "postgres": "ctxledger_events"}
SNAPSHOTS_TABLE = {"sqlite": "stored_snapshots", "postgres": "ctxledger_snapshots"}
VIEW_TRACKING_TABLE = "ctxledger_view_tracking"  # PostgreSQL; SQLite's is "tracking"
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


READER_CONNECTIONS = 4
"""Connections a PostgreSQL ledger's readers of the log may hold at once (beside
the pool that commands use): the change feed's reader, the expiry index,
verification, retention."""

LogRow = tuple[int, UUID | str, int, str, bytes]
"""An event as stored: (position, stream id, version, topic, state)."""


class Dialect(Protocol):
    """What differs between SQLite and PostgreSQL for tables beside the events."""

    @property
    def types(self) -> dict[str, str]: ...

    def table(self, name: str) -> str: ...
    def statement(self, text: str) -> str: ...
    def time_param(self, at: datetime | None) -> Any: ...
    def time_value(self, stored: Any) -> datetime | None: ...
    def lock(self, cursor: Any, key: str) -> None: ...
    def snapshot(self, cursor: Any) -> None: ...
    def row(self, stored: Any) -> tuple[Any, ...]: ...
    def exists(self, cursor: Any, name: str) -> bool: ...
    def columns(self, cursor: Any, name: str) -> set[str]: ...
    def insert(
        self, cursor: Any, table: str, columns: Sequence[str], rows: Sequence[Any]
    ) -> None: ...


def checked_identifier(name: str) -> str:
    if not _IDENTIFIER.fullmatch(name):
        msg = f"table name {name!r} is not a plain identifier"
        raise ValueError(msg)
    return name


class SQLiteDialect:
    # Times are ISO 8601 text in UTC with microseconds, so they sort as text.
    types: ClassVar[dict[str, str]] = {
        "text": "TEXT",
        "int": "INTEGER",
        "real": "REAL",
        "time": "TEXT",
    }

    def table(self, name: str) -> str:
        return f'"{checked_identifier(name)}"'

    def statement(self, text: str) -> str:
        return text

    def time_param(self, at: datetime | None) -> str | None:
        return None if at is None else at.astimezone(UTC).isoformat("T", "microseconds")

    def time_value(self, stored: Any) -> datetime | None:
        return None if stored is None else datetime.fromisoformat(stored)

    def lock(self, cursor: Any, key: str) -> None:
        # A write as the transaction's first statement takes SQLite's write lock
        # now, waiting for other writers, instead of failing later on upgrade.
        cursor.execute(
            "UPDATE tracking SET notification_id = notification_id "
            "WHERE application_name = ?",
            (key,),
        )

    def snapshot(self, cursor: Any) -> None:
        """Nothing to do: a deferred SQLite transaction reads one snapshot."""

    def exists(self, cursor: Any, name: str) -> bool:
        cursor.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        )
        return cursor.fetchone() is not None

    def columns(self, cursor: Any, name: str) -> set[str]:
        """The column names of a table (none if it does not exist)."""
        cursor.execute("SELECT name FROM pragma_table_info(?)", (name,))
        return {row[0] for row in cursor.fetchall()}

    def row(self, stored: Any) -> tuple[Any, ...]:
        return tuple(stored)

    def insert(
        self, cursor: Any, table: str, columns: Sequence[str], rows: Sequence[Any]
    ) -> None:
        """Inserts many rows (of plain values) into a table."""
        marks = ", ".join("?" * len(columns))
        text = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608  (our table names)
        cursor.executemany(text, rows)


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


class Backend:
    """What a ledger's storage can do beyond the library's common interface."""

    durable: ClassVar[bool] = True

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.kind = storage.kind

    def exists(self) -> bool:
        """Whether a ledger is stored there already (nothing is created to find out)."""
        raise NotImplementedError

    def setup_lock(self) -> AbstractContextManager[None]:
        """Held while creating tables."""
        return nullcontext()

    def dialect(self) -> Dialect:
        raise NotImplementedError

    tracking_table: ClassVar[str] = VIEW_TRACKING_TABLE
    """The views' tracking table (unquoted)."""

    def tracking(self, datastore: Any) -> tuple[TrackingRecorder, str]:
        """A tracking recorder beside the events and its table's quoted name."""
        raise NotImplementedError

    def log_reader(
        self, recorder: ApplicationRecorder, name: str, settings: Mapping[str, str]
    ) -> ApplicationRecorder:
        """The recorder through which readers of the log read (``name`` and
        ``settings`` are the application's): here the commands' own (a read never
        waits long where one writer appends at a time)."""
        return recorder

    def check_connections(self, recorders: Iterable[ApplicationRecorder]) -> None:
        """Replaces the pooled connections the server has closed (a restart, a
        terminated backend), so the next reads do not meet them one by one."""

    def key_store(self, datastore: Any, master_key: MasterKey | None) -> KeyStore:
        """The users' data keys, in a table beside the events."""
        return SQLKeyStore(
            datastore,
            self._table(KEYS_TABLE),
            sqlite_path=self.storage.settings.get("SQLITE_DBNAME")
            if self.kind == "sqlite"
            else None,
            master_key=master_key,
        )

    def erasure_marks(self, datastore: Any) -> ErasureMarks:
        """The marks of erasures in progress, in a table beside the events."""
        return SQLErasureMarks(datastore, self.dialect())

    def count_after(self, recorder: ApplicationRecorder, position: int) -> int:
        """How many events are stored after ``position`` (positions can skip)."""
        table = self._table(EVENTS_TABLE[self.kind])
        column = self._position_column
        query = f"SELECT COUNT(*) AS n FROM {table} WHERE {column} > ?"  # noqa: S608  (our table names)
        with recorder.datastore.transaction(commit=False) as cursor:  # type: ignore[attr-defined]
            cursor.execute(self.dialect().statement(query), (position,))
            return int(self.dialect().row(cursor.fetchone())[0])

    def stream_version_at(
        self, recorder: ApplicationRecorder, stream: UUID, position: int
    ) -> int:
        """The stream's last version stored at or before ``position`` (0: none)."""
        query = (
            f"SELECT MAX(originator_version) AS v FROM {self._events} "  # noqa: S608  (our table names)
            f"WHERE originator_id = ? AND {self._position_column} <= ?"
        )
        with recorder.datastore.transaction(commit=False) as cursor:  # type: ignore[attr-defined]
            cursor.execute(
                self.dialect().statement(query), (self._stream_key(stream), position)
            )
            found = self.dialect().row(cursor.fetchone())[0]
        return int(found or 0)

    def stream_after(
        self,
        recorder: ApplicationRecorder,
        stream: UUID,
        version: int,
        up_to: int,
        limit: int,
    ) -> list[Notification]:
        """The stream's events after ``version`` stored at positions up to
        ``up_to``, in order, at most ``limit`` (read by the primary key)."""
        column = self._position_column
        query = (
            f"SELECT {column} AS position, originator_id, originator_version, "  # noqa: S608  (our table names)
            f"topic, state FROM {self._events} WHERE originator_id = ? "
            f"AND originator_version > ? AND {column} <= ? "
            "ORDER BY originator_version LIMIT ?"
        )
        with recorder.datastore.transaction(commit=False) as cursor:  # type: ignore[attr-defined]
            cursor.execute(
                self.dialect().statement(query),
                (self._stream_key(stream), version, up_to, limit),
            )
            rows = [self.dialect().row(row) for row in cursor.fetchall()]
        return [
            Notification(
                id=position,
                originator_id=as_stream_id(originator_id),
                originator_version=found_version,
                topic=topic,
                state=bytes(state),
            )
            for position, originator_id, found_version, topic, state in rows
        ]

    def log_rows(
        self,
        recorder: ApplicationRecorder,
        after: int,
        limit: int,
        up_to: int | None = None,
    ) -> list[LogRow]:
        """(position, stream id, version, topic, state) of the events after
        position ``after`` (and at most ``up_to``), in log order, at most
        ``limit``: ``select_notifications`` as plain rows, for readers that decode
        them themselves (``ledger.store.records``)."""
        column = self._position_column
        query = (
            f"SELECT {column} AS position, originator_id, originator_version, "  # noqa: S608  (our table names)
            f"topic, state FROM {self._events} WHERE {column} > ? "
            + ("" if up_to is None else f"AND {column} <= ? ")
            + f"ORDER BY {column} LIMIT ?"
        )
        params = (after, limit) if up_to is None else (after, up_to, limit)
        dialect = self.dialect()
        with recorder.datastore.transaction(commit=False) as cursor:  # type: ignore[attr-defined]
            cursor.execute(dialect.statement(query), params)
            return [dialect.row(row) for row in cursor.fetchall()]

    def stream_rows(
        self, recorder: ApplicationRecorder, stream: UUID, version: int, limit: int
    ) -> list[tuple[int, str, bytes]]:
        """(version, topic, state) of the stream's events after ``version``, in
        order, at most ``limit``: the rows as they are, for readers that decode
        them themselves (``ledger.store.records``)."""
        query = (
            f"SELECT originator_version, topic, state FROM {self._events} "  # noqa: S608  (our table names)
            "WHERE originator_id = ? AND originator_version > ? "
            "ORDER BY originator_version LIMIT ?"
        )
        dialect = self.dialect()
        with recorder.datastore.transaction(commit=False) as cursor:  # type: ignore[attr-defined]
            cursor.execute(
                dialect.statement(query), (self._stream_key(stream), version, limit)
            )
            return [dialect.row(row) for row in cursor.fetchall()]

    @property
    def _events(self) -> str:
        return self._table(EVENTS_TABLE[self.kind])

    def _stream_key(self, stream: UUID) -> Any:
        return stream

    def snapshot_streams(self, recorder: Any) -> list[UUID | str]:
        """The streams that have snapshots (the library has no call for this)."""
        return _distinct_streams(recorder, self._table(SNAPSHOTS_TABLE[self.kind]))

    def delete_snapshots(self, snapshots: Any, stream: UUID) -> None:
        """Deletes a stream's snapshots (a cache: loading replays the events), as
        an erasure does: snapshots of an older release hold metadata in plain
        form. On SQLite the deleted bytes are overwritten (secure_delete)."""
        if snapshots is None:
            return
        query = self.dialect().statement(
            f"DELETE FROM {self._table(SNAPSHOTS_TABLE[self.kind])} "  # noqa: S608  (our table names)
            "WHERE originator_id = ?"
        )
        with snapshots.recorder.datastore.transaction(commit=True) as cursor:
            if self.kind == "sqlite":
                cursor.execute("PRAGMA secure_delete = ON")
            cursor.execute(query, (self._stream_key(stream),))

    _position_column = "notification_id"

    def _table(self, name: str) -> str:
        return self.dialect().table(name)


class SQLiteBackend(Backend):
    tracking_table = "tracking"  # the library's fixed name, shared by key
    _position_column = "rowid"

    def _stream_key(self, stream: UUID) -> Any:
        return stream.hex  # how the library's SQLite recorder stores the id

    @property
    def path(self) -> Path:
        return Path(self.storage.settings["SQLITE_DBNAME"])

    def exists(self) -> bool:
        if not self.path.is_file():
            return False
        uri = f"{self.path.resolve().as_uri()}?mode=ro"
        with sqlite3.connect(uri, uri=True) as connection:
            found = connection.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                (EVENTS_TABLE["sqlite"],),
            ).fetchone()
        connection.close()
        return found is not None

    def dialect(self) -> Dialect:
        return SQLiteDialect()

    def tracking(self, datastore: Any) -> tuple[TrackingRecorder, str]:
        # SQLite's tracking table is shared: each view tracks under its own key.
        return SQLiteTrackingRecorder(datastore), self._table(self.tracking_table)


class PostgresBackend(Backend):
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
                (self._table(EVENTS_TABLE["postgres"]),),
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


class MemoryBackend(Backend):
    """memory://: one process, nothing outside it can change or keep it."""

    durable = False

    def exists(self) -> bool:
        return False

    def key_store(self, datastore: Any, master_key: MasterKey | None) -> KeyStore:
        return MemoryKeyStore(master_key)

    def erasure_marks(self, datastore: Any) -> ErasureMarks:
        return ErasureMarks()

    def delete_snapshots(self, snapshots: Any, stream: UUID) -> None:
        """Nothing outside the process keeps them; their sealed metadata cannot be
        opened once the key is destroyed."""

    def snapshot_streams(self, recorder: Any) -> list[UUID | str]:
        return []

    def stream_version_at(
        self, recorder: ApplicationRecorder, stream: UUID, position: int
    ) -> int:
        versions = [
            n.originator_version
            for n in self._stream(recorder, stream, 0, position, None)
        ]
        return max(versions, default=0)

    def stream_after(
        self,
        recorder: ApplicationRecorder,
        stream: UUID,
        version: int,
        up_to: int,
        limit: int,
    ) -> list[Notification]:
        return self._stream(recorder, stream, version, up_to, limit)

    def log_rows(
        self,
        recorder: ApplicationRecorder,
        after: int,
        limit: int,
        up_to: int | None = None,
    ) -> list[LogRow]:
        return [
            (n.id, n.originator_id, n.originator_version, n.topic, n.state)
            for n in recorder.select_notifications(
                start=after, limit=limit, stop=up_to, inclusive_of_start=False
            )
        ]

    def stream_rows(
        self, recorder: ApplicationRecorder, stream: UUID, version: int, limit: int
    ) -> list[tuple[int, str, bytes]]:
        return [
            (e.originator_version, e.topic, e.state)
            for e in recorder.select_events(stream, gt=version, limit=limit)
        ]

    @staticmethod
    def _stream(
        recorder: ApplicationRecorder,
        stream: UUID,
        version: int,
        up_to: int,
        limit: int | None,
    ) -> list[Notification]:
        found = [
            n
            for n in recorder.select_notifications(start=1, limit=up_to, stop=up_to)
            if as_stream_id(n.originator_id) == stream
            and n.originator_version > version
        ]
        return found[:limit] if limit is not None else found


def safe_head(
    recorder: ApplicationRecorder, timeout: float = SAFE_HEAD_TIMEOUT_SECONDS
) -> int:
    """The last position a reader of the log may read up to: no event can still
    appear at or before it (an event that commits late has a lower position).

    Every reader of the log stops there (views, the expiry index, verification).
    PostgreSQL appends in parallel, so ids can commit out of order: the recorder
    waits up to ``timeout`` seconds for older transactions to end. Where one writer
    appends at a time (SQLite, memory, the library's own PostgreSQL recorder with
    its table lock) it is the last event stored.
    """
    if isinstance(recorder, ParallelPostgresRecorder):
        head: int = recorder.safe_head(timeout)
        return head
    return recorder.max_notification_id() or 0


def backend_for(storage: Storage) -> Backend:
    backends: dict[str, type[Backend]] = {
        "sqlite": SQLiteBackend,
        "postgres": PostgresBackend,
        "memory": MemoryBackend,
    }
    return backends[storage.kind](storage)


def _distinct_streams(recorder: Any, table: str) -> list[UUID | str]:
    with recorder.datastore.transaction(commit=False) as cursor:
        cursor.execute(f"SELECT DISTINCT originator_id AS id FROM {table}")  # noqa: S608  (our table names)
        return [as_stream_id(row["id"]) for row in cursor.fetchall()]


def as_stream_id(value: UUID | str) -> UUID | str:
    """The stream id as a UUID; a stored id that is not one is kept as it is."""
    if isinstance(value, UUID):
        return value
    try:
        return UUID(value)
    except ValueError:
        return value
