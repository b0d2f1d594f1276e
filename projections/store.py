"""Where views keep their tables and tracking positions: the ledger's own database.

A view's rows and its tracking position are always written in one transaction, by
a writer holding the view's lock, so a crash at any instant leaves both as they
were before or both as they are after. The SQL of the views is written once, with
``?`` parameters and type names in braces; each dialect fills those in.
"""

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, ClassVar, Protocol

from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.sqlite import SQLiteDatastore, SQLiteTrackingRecorder
from psycopg.types.json import Jsonb

TRACKING_TABLE = "ctxledger_view_tracking"  # PostgreSQL; SQLite's is always "tracking"
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


class Dialect(Protocol):
    """What differs between SQLite and PostgreSQL for the views."""

    @property
    def types(self) -> dict[str, str]: ...

    def table(self, name: str) -> str: ...
    def statement(self, text: str) -> str: ...
    def time_param(self, at: datetime | None) -> Any: ...
    def time_value(self, stored: Any) -> datetime | None: ...
    def json_param(self, value: Any) -> Any: ...
    def json_value(self, stored: Any) -> Any: ...
    def lock(self, cursor: Any, key: str) -> None: ...
    def snapshot(self, cursor: Any) -> None: ...
    def row(self, stored: Any) -> tuple[Any, ...]: ...
    def exists(self, cursor: Any, name: str) -> bool: ...


def _checked(name: str) -> str:
    if not _IDENTIFIER.fullmatch(name):
        msg = f"table name {name!r} is not a plain identifier"
        raise ValueError(msg)
    return name


def json_text(value: Any) -> str:
    """The compact, key-sorted JSON text of a value."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


class SQLiteDialect:
    # Times are ISO 8601 text in UTC with microseconds, so they sort as text.
    types: ClassVar[dict[str, str]] = {
        "text": "TEXT",
        "int": "INTEGER",
        "real": "REAL",
        "json": "TEXT",
        "time": "TEXT",
    }

    def table(self, name: str) -> str:
        return f'"{_checked(name)}"'

    def statement(self, text: str) -> str:
        return text

    def time_param(self, at: datetime | None) -> str | None:
        return None if at is None else at.astimezone(UTC).isoformat("T", "microseconds")

    def time_value(self, stored: Any) -> datetime | None:
        return None if stored is None else datetime.fromisoformat(stored)

    def json_param(self, value: Any) -> str:
        return json_text(value)

    def json_value(self, stored: Any) -> Any:
        return json.loads(stored)

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

    def row(self, stored: Any) -> tuple[Any, ...]:
        return tuple(stored)


class PostgresDialect:
    types: ClassVar[dict[str, str]] = {
        "text": "TEXT",
        "int": "BIGINT",
        "real": "DOUBLE PRECISION",
        "json": "JSONB",
        "time": "TIMESTAMPTZ",
    }

    def __init__(self, schema: str) -> None:
        self.schema = _checked(schema)

    def table(self, name: str) -> str:
        return f'"{self.schema}"."{_checked(name)}"'

    def statement(self, text: str) -> str:
        return text.replace("?", "%s")

    def time_param(self, at: datetime | None) -> datetime | None:
        return at

    def time_value(self, stored: Any) -> datetime | None:
        return None if stored is None else stored.astimezone(UTC)

    def json_param(self, value: Any) -> Jsonb:
        return Jsonb(value)

    def json_value(self, stored: Any) -> Any:
        return stored

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


class Tx:
    """One transaction on the views' database, in the dialect's terms."""

    def __init__(self, cursor: Any, dialect: Dialect) -> None:
        self.cursor = cursor
        self.dialect = dialect

    def run(self, text: str, params: Sequence[Any] = ()) -> None:
        self.cursor.execute(self.dialect.statement(text), tuple(params))

    def run_many(self, text: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.cursor.executemany(self.dialect.statement(text), rows)

    def rows(self, text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.run(text, params)
        return [self.dialect.row(row) for row in self.cursor.fetchall()]


class ViewStore:
    """Transactions that hold a view's lock, and the views' tracking positions."""

    def __init__(
        self,
        recorder: SQLiteTrackingRecorder | PostgresTrackingRecorder,
        dialect: Dialect,
        tracking_table: str,
    ) -> None:
        self.recorder = recorder
        self.dialect = dialect
        self.tracking_table = tracking_table

    @classmethod
    def beside(cls, datastore: SQLiteDatastore | PostgresDatastore) -> "ViewStore":
        """A store in the same database (and connection pool) as the ledger."""
        if isinstance(datastore, SQLiteDatastore):
            # SQLite's tracking table is shared: each view tracks under its own key.
            recorder: SQLiteTrackingRecorder | PostgresTrackingRecorder = (
                SQLiteTrackingRecorder(datastore)
            )
            dialect: Dialect = SQLiteDialect()
            tracking = "tracking"
        else:
            recorder = PostgresTrackingRecorder(
                datastore, tracking_table_name=TRACKING_TABLE
            )
            dialect = PostgresDialect(datastore.schema or "public")
            tracking = TRACKING_TABLE
        recorder.create_table()
        return cls(recorder, dialect, dialect.table(tracking))

    @contextmanager
    def writing(self, lock: str) -> Iterator[Tx]:
        """A transaction holding ``lock`` from its start; commits if the body ends."""
        with self.recorder.datastore.transaction(commit=True) as cursor:
            self.dialect.lock(cursor, lock)
            yield Tx(cursor, self.dialect)

    @contextmanager
    def reading(self) -> Iterator[Tx]:
        """A read-only transaction that sees one snapshot throughout."""
        with self.recorder.datastore.transaction(commit=False) as cursor:
            self.dialect.snapshot(cursor)
            yield Tx(cursor, self.dialect)

    def position(self, tx: Tx, key: str) -> int:
        """The last notification id applied under ``key``; 0 for none."""
        return self.recorder._max_tracking_id(key, tx.cursor) or 0

    def track(self, tx: Tx, key: str, position: int) -> None:
        """Records ``position`` under ``key`` (the library refuses to go backwards)."""
        self.recorder._insert_tracking(tx.cursor, Tracking(key, position))

    def move_tracking(self, tx: Tx, source: str, target: str) -> None:
        """``target`` takes ``source``'s position; ``source`` is removed."""
        tx.run(
            f"DELETE FROM {self.tracking_table} WHERE application_name = ?", (target,)
        )
        tx.run(
            f"UPDATE {self.tracking_table} SET application_name = ? "
            "WHERE application_name = ?",
            (target, source),
        )

    def forget(self, tx: Tx, key: str) -> None:
        tx.run(f"DELETE FROM {self.tracking_table} WHERE application_name = ?", (key,))
