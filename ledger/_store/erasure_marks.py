"""Erasures in progress: a mark written before a ``forgotten`` event is appended
and removed once the keys it retires are destroyed.

An erasure is two writes (the event, then the keys' destruction); a crash, a
full disk or a lost connection between them would leave the personal data
readable behind a recorded erasure. The mark makes that state findable without
reading the log. It names the version its event is appended at: whoever meets it
(opening a ledger, ``forget_user``, ``forget_inactive``, ``expire_due``) reads
the event stored at that version, finishes the erasure if it is that
``forgotten`` event, drops the mark if another event took the version (the
erasure never took effect), and leaves it while the version is free. A user has
a mark per erasure (keyed by the generations it retires), so a later attempt
never hides an earlier one that is still unfinished.
"""

import threading
from typing import TYPE_CHECKING, Any
from uuid import UUID

if TYPE_CHECKING:
    from ledger._store.backends import Dialect

ERASURES_TABLE = "ctxledger_erasures"

Mark = tuple[str, int, int]
"""An erasure in progress: the user, the key generations it retires (those below
the number) and the version its ``forgotten`` event is appended at."""


class ErasureMarks:
    """The marks of one ledger, in memory (memory://: nothing outlives the process)."""

    def __init__(self) -> None:
        self._marks: dict[tuple[UUID, int], Mark] = {}
        self._lock = threading.Lock()

    def create_table(self) -> None:
        """Nothing to create."""

    def add(self, stream: UUID, user_id: str, below: int, version: int) -> None:
        with self._lock:
            self._marks[stream, below] = (user_id, below, version)

    def remove(self, stream: UUID, below: int) -> None:
        """Removes the stream's marks of erasures retiring no more than ``below``
        (destroying the keys below it finishes them all)."""
        with self._lock:
            for key in [k for k in self._marks if k[0] == stream and k[1] <= below]:
                del self._marks[key]

    def drop(self, stream: UUID, below: int) -> None:
        """Removes one mark: its erasure never took effect."""
        with self._lock:
            self._marks.pop((stream, below), None)

    def all(self) -> list[Mark]:
        with self._lock:
            return list(self._marks.values())


class SQLErasureMarks(ErasureMarks):
    """The marks in a table beside the events (SQLite or PostgreSQL)."""

    def __init__(self, datastore: Any, dialect: "Dialect") -> None:
        super().__init__()
        self.datastore = datastore
        self.dialect = dialect
        self.table = dialect.table(ERASURES_TABLE)

    def create_table(self) -> None:
        with self.datastore.transaction(commit=True) as cursor:
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} ("
                "stream_id TEXT NOT NULL, below BIGINT NOT NULL, "
                "user_id TEXT NOT NULL, version BIGINT NOT NULL, "
                "PRIMARY KEY (stream_id, below))"
            )

    def add(self, stream: UUID, user_id: str, below: int, version: int) -> None:
        # A retry after a conflict appends at a later version: the mark follows.
        statement = self.dialect.statement(
            f"INSERT INTO {self.table} (stream_id, below, user_id, version) "  # noqa: S608  (our table name)
            "VALUES (?, ?, ?, ?) ON CONFLICT (stream_id, below) "
            "DO UPDATE SET version = excluded.version"
        )
        with self.datastore.transaction(commit=True) as cursor:
            cursor.execute(statement, (stream.hex, below, user_id, version))

    def remove(self, stream: UUID, below: int) -> None:
        statement = self.dialect.statement(
            f"DELETE FROM {self.table} WHERE stream_id = ? AND below <= ?"  # noqa: S608  (our table name)
        )
        with self.datastore.transaction(commit=True) as cursor:
            cursor.execute(statement, (stream.hex, below))

    def drop(self, stream: UUID, below: int) -> None:
        statement = self.dialect.statement(
            f"DELETE FROM {self.table} WHERE stream_id = ? AND below = ?"  # noqa: S608  (our table name)
        )
        with self.datastore.transaction(commit=True) as cursor:
            cursor.execute(statement, (stream.hex, below))

    def all(self) -> list[Mark]:
        if not self._exists():
            return []  # a ledger set up before marks existed, opened read-only
        statement = (
            f"SELECT user_id, below, version FROM {self.table} "  # noqa: S608  (our table name)
            "ORDER BY stream_id, below"
        )
        with self.datastore.transaction(commit=False) as cursor:
            cursor.execute(statement)
            rows = [self.dialect.row(row) for row in cursor.fetchall()]
        return [(str(user), int(below), int(version)) for user, below, version in rows]

    def _exists(self) -> bool:
        with self.datastore.transaction(commit=False) as cursor:
            return self.dialect.exists(cursor, ERASURES_TABLE)
