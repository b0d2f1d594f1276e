"""SQLite: a file in WAL mode, one writer at a time (what differs from the
shared ``Backend``: the dialect, the library's fixed table names, the key table's
file, the tracking table shared by key)."""

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar
from uuid import UUID

from eventsourcing.persistence import TrackingRecorder
from eventsourcing.sqlite import SQLiteTrackingRecorder

from ledger._store.backends import Backend, Dialect, checked_identifier
from ledger._store.key_sql import SQLKeyTable
from ledger._store.keys import KEYS_TABLE, KeyStore, MasterKey, SQLKeyStore


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


class SQLiteBackend(Backend):
    tracking_table = "tracking"  # the library's fixed name, shared by key
    secure_delete: ClassVar[str | None] = "PRAGMA secure_delete = ON"
    _position_column = "rowid"

    def key_store(self, datastore: Any, master_key: MasterKey | None) -> KeyStore:
        table = SQLiteKeyTable(
            datastore, self._table(KEYS_TABLE), self.dialect().statement
        )
        table.path = str(self.path)
        return SQLKeyStore(table, master_key)

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
                (self.events_table,),
            ).fetchone()
        connection.close()
        return found is not None

    def dialect(self) -> Dialect:
        return SQLiteDialect()

    def tracking(self, datastore: Any) -> tuple[TrackingRecorder, str]:
        # SQLite's tracking table is shared: each view tracks under its own key.
        return SQLiteTrackingRecorder(datastore), self._table(self.tracking_table)


class SQLiteKeyTable(SQLKeyTable):
    """The key table in a SQLite file: a deleted key's bytes are overwritten, and
    the WAL is truncated after an erasure."""

    secure_delete: ClassVar[str | None] = "PRAGMA secure_delete = ON"
    path = ""
    """The database file (set by ``SQLiteBackend.key_store``)."""

    def checkpoint(self) -> None:
        """Copies the WAL into the database file and truncates it, so the pages
        that held a destroyed key do not stay in the WAL file. A busy reader may
        keep the WAL; its pages are overwritten as it is reused."""
        connection = sqlite3.connect(self.path, timeout=5)
        try:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError:
            pass  # busy: the next checkpoint copies it
        finally:
            connection.close()
