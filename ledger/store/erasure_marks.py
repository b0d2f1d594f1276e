"""Erasures in progress: a mark written before a ``forgotten`` event is appended
and removed once the keys it retires are destroyed.

An erasure is two writes (the event, then the keys' destruction); a crash, a
full disk or a lost connection between them would leave the personal data
readable behind a recorded erasure. The mark makes that state findable without
reading the log: whoever meets a mark (opening a ledger, ``forget_user``,
``forget_inactive``, ``expire_due``) finishes the erasure if its event is stored,
or drops the mark if it is not (the erasure never took effect).
"""

import threading
from typing import TYPE_CHECKING, Any
from uuid import UUID

if TYPE_CHECKING:
    from ledger.store.backends import Dialect

ERASURES_TABLE = "ctxledger_erasures"

Mark = tuple[str, int]
"""An erasure in progress: the user and the key generations it retires (those
below the number)."""


class ErasureMarks:
    """The marks of one ledger, in memory (memory://: nothing outlives the process)."""

    def __init__(self) -> None:
        self._marks: dict[UUID, Mark] = {}
        self._lock = threading.Lock()

    def create_table(self) -> None:
        """Nothing to create."""

    def add(self, stream: UUID, user_id: str, below: int) -> None:
        with self._lock:
            self._marks[stream] = (user_id, below)

    def remove(self, stream: UUID, below: int) -> None:
        """Removes the stream's mark unless a later erasure has replaced it."""
        with self._lock:
            if self._marks.get(stream, ("", below))[1] <= below:
                self._marks.pop(stream, None)

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
                "stream_id TEXT PRIMARY KEY, user_id TEXT NOT NULL, "
                "below BIGINT NOT NULL)"
            )

    def add(self, stream: UUID, user_id: str, below: int) -> None:
        statement = self.dialect.statement(
            f"INSERT INTO {self.table} (stream_id, user_id, below) VALUES (?, ?, ?) "  # noqa: S608  (our table name)
            "ON CONFLICT (stream_id) DO UPDATE SET user_id = excluded.user_id, "
            "below = excluded.below"
        )
        with self.datastore.transaction(commit=True) as cursor:
            cursor.execute(statement, (stream.hex, user_id, below))

    def remove(self, stream: UUID, below: int) -> None:
        statement = self.dialect.statement(
            f"DELETE FROM {self.table} WHERE stream_id = ? AND below <= ?"  # noqa: S608  (our table name)
        )
        with self.datastore.transaction(commit=True) as cursor:
            cursor.execute(statement, (stream.hex, below))

    def all(self) -> list[Mark]:
        if not self._exists():
            return []  # a ledger set up before marks existed, opened read-only
        statement = f"SELECT user_id, below FROM {self.table} ORDER BY stream_id"  # noqa: S608  (our table name)
        with self.datastore.transaction(commit=False) as cursor:
            cursor.execute(statement)
            rows = [self.dialect.row(row) for row in cursor.fetchall()]
        return [(str(user), int(below)) for user, below in rows]

    def _exists(self) -> bool:
        with self.datastore.transaction(commit=False) as cursor:
            return self.dialect.exists(cursor, ERASURES_TABLE)
