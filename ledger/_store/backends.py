"""What a ledger's storage can do beyond the library's common interface.

``Backend`` holds what the backends share (the queries the library has no call
for, written once in the dialect's placeholders); each backend's own module says
what differs: ``ledger._store.sqlite``, ``ledger._store.postgres`` and
``ledger._store.memory`` (whether a ledger already exists at a URL, the set-up
lock, the SQL dialect, the tracking table, the key table, the readers' pool).
"""

import re
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from typing import Any, ClassVar, Protocol
from uuid import UUID

from eventsourcing.persistence import (
    ApplicationRecorder,
    Notification,
    TrackingRecorder,
)

from ledger._store.erasure_marks import ErasureMarks, SQLErasureMarks
from ledger._store.keys import (
    KeyStore,
    MasterKey,
)
from ledger._store.postgres_log import (
    SAFE_HEAD_TIMEOUT_SECONDS,
)
from ledger._store.urls import Storage

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


class Backend:
    """What a ledger's storage can do beyond the library's common interface."""

    durable: ClassVar[bool] = True
    events_table: ClassVar[str] = "stored_events"
    snapshots_table: ClassVar[str] = "stored_snapshots"
    secure_delete: ClassVar[str | None] = None
    """The statement that makes a deletion overwrite the deleted bytes, if any."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage

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
        raise NotImplementedError

    def erasure_marks(self, datastore: Any) -> ErasureMarks:
        """The marks of erasures in progress, in a table beside the events."""
        return SQLErasureMarks(datastore, self.dialect())

    def count_after(self, recorder: ApplicationRecorder, position: int) -> int:
        """How many events are stored after ``position`` (positions can skip)."""
        table = self._table(self.events_table)
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
        them themselves (``ledger._store.records``)."""
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
        them themselves (``ledger._store.records``)."""
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
        return self._table(self.events_table)

    def _stream_key(self, stream: UUID) -> Any:
        return stream

    def snapshot_streams(self, recorder: Any) -> list[UUID | str]:
        """The streams that have snapshots (the library has no call for this)."""
        return _distinct_streams(recorder, self._table(self.snapshots_table))

    def delete_snapshots(self, snapshots: Any, stream: UUID) -> None:
        """Deletes a stream's snapshots (a cache: loading replays the events), as
        an erasure does: snapshots of an older release hold metadata in plain
        form. On SQLite the deleted bytes are overwritten (secure_delete)."""
        if snapshots is None:
            return
        query = self.dialect().statement(
            f"DELETE FROM {self._table(self.snapshots_table)} "  # noqa: S608  (our table names)
            "WHERE originator_id = ?"
        )
        with snapshots.recorder.datastore.transaction(commit=True) as cursor:
            if self.secure_delete is not None:
                cursor.execute(self.secure_delete)
            cursor.execute(query, (self._stream_key(stream),))

    _position_column = "notification_id"

    def _table(self, name: str) -> str:
        return self.dialect().table(name)


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
    waits = getattr(recorder, "safe_head", None)  # ParallelPostgresRecorder's
    if waits is not None:
        head: int = waits(timeout)
        return head
    return recorder.max_notification_id() or 0


def backend_for(storage: Storage) -> Backend:
    """The backend of ``storage`` (each in its own module, which imports this one)."""
    from ledger._store.memory import MemoryBackend  # noqa: PLC0415  (import cycle)
    from ledger._store.postgres import PostgresBackend  # noqa: PLC0415
    from ledger._store.sqlite import SQLiteBackend  # noqa: PLC0415

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
