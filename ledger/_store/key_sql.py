"""The key table in the ledger's database (SQLite or PostgreSQL): its SQL only.

Statements name the table as ``{table}`` and take ``?`` markers (``%s`` on
PostgreSQL); ``_sql`` fills both in.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from ledger._store.key_table import (
    META_GENERATION,
    Found,
    KeyTable,
    MigrationLost,
    Tombstones,
    Vouch,
    downgraded,
)
from ledger.errors import LedgerConfigError

_ROW = "stream_id, generation, data_key, wrapped, destroyed"
_NOT_META = f"NOT (stream_id = '' AND generation = {META_GENERATION})"


def _is_missing_table(error: BaseException) -> bool:
    """Whether a database error (as the driver or the library raised it) says
    that the keys table does not exist: a store set up before keys existed."""
    text = str(error)
    return "no such table" in text or (
        "ctxledger_keys" in text and "does not exist" in text
    )


def _found(row: tuple[Any, ...]) -> Found:
    return bytes(row[0]), bool(row[1]), bool(row[2])


class SQLKeyTable(KeyTable):
    """Keys in a table of the ledger's database. The SQL is the backends' common
    SQL (``?`` placeholders, turned into the dialect's); what differs is said by
    each backend's subclass (``ledger._store.sqlite``, ``ledger._store.postgres``)."""

    blob: ClassVar[str] = "BLOB"
    """The column type of the keys' bytes."""
    lock_for_migration: ClassVar[str | None] = None
    """A statement that keeps rows from being added or changed while the table
    is migrated, where the database does not already (``{table}`` is the table)."""
    secure_delete: ClassVar[str | None] = None
    """A statement that makes a deletion overwrite the deleted bytes, if any."""

    def __init__(
        self, datastore: Any, table: str, statement: Callable[[str], str]
    ) -> None:
        self.datastore = datastore
        self.table = table
        self._statement = statement

    def _sql(self, text: str) -> str:
        return self._statement(text.replace("{table}", self.table))

    def create(self) -> None:
        with self.datastore.transaction(commit=True) as cursor:
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} ("
                "stream_id TEXT NOT NULL, generation BIGINT NOT NULL, "
                f"data_key {self.blob} NOT NULL, wrapped INTEGER NOT NULL, "
                "destroyed INTEGER NOT NULL DEFAULT 0, "
                "PRIMARY KEY (stream_id, generation))"
            )

    def select(self, stream: str, generation: int, cursor: Any = None) -> Found | None:
        query = self._sql(
            "SELECT data_key, wrapped, destroyed FROM {table} "
            "WHERE stream_id = ? AND generation = ?"
        )
        rows = self._rows(query, (stream, generation), cursor)
        return _found(rows[0]) if rows else None

    def select_streams(
        self, streams: list[str], cursor: Any = None
    ) -> dict[tuple[str, int], Found]:
        marks = ", ".join("?" * len(streams))
        query = self._sql(
            f"SELECT {_ROW} FROM {{table}} WHERE stream_id IN ({marks})"  # noqa: S608  (constants and markers only)
        )
        return {
            (row[0], int(row[1])): _found(row[2:])
            for row in self._rows(query, tuple(streams), cursor)
        }

    def page(self, after: tuple[str, int], limit: int) -> list[tuple[str, int, Found]]:
        query = self._sql(
            f"SELECT {_ROW} FROM {{table}} WHERE (stream_id, generation) > (?, ?) "  # noqa: S608  (constants only)
            f"AND {_NOT_META} ORDER BY stream_id, generation LIMIT ?"
        )
        params = (after[0], after[1], limit)
        return [
            (row[0], int(row[1]), _found(row[2:]))
            for row in self._rows(query, params, None)
        ]

    def _rows(
        self, query: str, params: tuple[Any, ...], cursor: Any
    ) -> list[tuple[Any, ...]]:
        """The rows a query selects, on ``cursor`` if given (inside the caller's
        transaction), else in a transaction of its own."""
        try:
            if cursor is not None:
                cursor.execute(query, params)
                rows = cursor.fetchall()
            else:
                with self.datastore.transaction(commit=False) as own:
                    own.execute(query, params)
                    rows = own.fetchall()
        except Exception as error:
            if _is_missing_table(error):
                return []  # a store set up before keys existed: nothing sealed
            raise
        return [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in rows]

    def insert(self, stream: str, generation: int, key: bytes, wrapped: bool) -> bool:
        # A key stored in plain form only while no master key was adopted: a
        # process opened before the adoption must not add one after it.
        source = (
            "VALUES (?, ?, ?, 1)"
            if wrapped
            else "SELECT ?, CAST(? AS BIGINT), ?, 0 WHERE NOT EXISTS (SELECT 1 FROM "
            "{table} WHERE stream_id = '' AND generation = -1 AND wrapped <> 0)"
        )
        query = self._sql(
            "INSERT INTO {table} (stream_id, generation, data_key, wrapped) "
            f"{source} ON CONFLICT (stream_id, generation) DO NOTHING "
            "RETURNING generation"
        )
        try:
            with self.datastore.transaction(commit=True) as cursor:
                cursor.execute(query, (stream, generation, key))
                return cursor.fetchone() is not None
        except Exception as error:
            if _is_missing_table(error):
                raise LedgerConfigError(
                    "this ledger was set up by a release without data keys: open "
                    "it once with create=True (any command that writes, such as "
                    "ctxledger project) to add their table"
                ) from None
            raise

    def replace(self, stream: str, generation: int, old: bytes, new: bytes) -> bool:
        query = self._sql(
            "UPDATE {table} SET data_key = ?, wrapped = 1, destroyed = 0 "
            "WHERE stream_id = ? AND generation = ? AND data_key = ? "
            "RETURNING generation"
        )
        with self.datastore.transaction(commit=True) as cursor:
            cursor.execute(query, (new, stream, generation, old))
            return cursor.fetchone() is not None

    def migrate(self, old: bytes, new: bytes, vouch: Vouch, *, adopting: bool) -> None:
        with self.datastore.transaction(commit=True) as cursor:
            if self.lock_for_migration is not None:
                cursor.execute(self._sql(self.lock_for_migration))
            cursor.execute(
                self._sql(
                    "UPDATE {table} SET data_key = ?, wrapped = 1 WHERE "
                    "stream_id = '' AND generation = -1 AND data_key = ? "
                    "RETURNING generation"
                ),
                (new, old),
            )
            if cursor.fetchone() is None:
                raise MigrationLost  # another process's migration came first
            if adopting and self.any_wrapped(cursor):
                raise downgraded()
            self._vouch_all(cursor, vouch)

    def _vouch_all(self, cursor: Any, vouch: Vouch) -> None:
        """Seals every row in plain form by the master key, in one transaction."""
        rows = self._rows(
            self._sql(
                f"SELECT {_ROW} FROM {{table}} WHERE wrapped = 0 AND {_NOT_META}"  # noqa: S608  (constants only)
            ),
            (),
            cursor,
        )
        update = self._sql(
            "UPDATE {table} SET data_key = ?, wrapped = 1 "
            "WHERE stream_id = ? AND generation = ?"
        )
        changes = []
        for stream, generation, stored, _, destroyed in rows:
            vouched = vouch(stream, int(generation), bytes(stored), bool(destroyed))
            if vouched is not None:
                changes.append((vouched, stream, generation))
        if changes:
            cursor.executemany(update, changes)

    def any_wrapped(self, cursor: Any = None) -> bool:
        query = self._sql(
            "SELECT 1 FROM {table} WHERE wrapped <> 0 AND generation >= 0 LIMIT 1"
        )
        return bool(self._rows(query, (), cursor))

    def live(self, stream: str, below: int) -> list[int]:
        query = self._sql(
            "SELECT generation FROM {table} WHERE stream_id = ? "
            "AND generation >= 0 AND generation < ? AND destroyed = 0 "
            "ORDER BY generation"
        )
        return [int(row[0]) for row in self._rows(query, (stream, below), None)]

    def destroy_on(self, cursor: Any, stream: str, tombstones: Tombstones) -> None:
        if self.secure_delete is not None:
            cursor.execute(self.secure_delete)
        cursor.execute(
            self._sql(
                "DELETE FROM {table} WHERE stream_id = ? AND generation >= 0 "
                "AND generation < ?"
            ),
            (stream, max(g for g, _, _ in tombstones) + 1),
        )
        cursor.executemany(
            self._sql(
                "INSERT INTO {table} (stream_id, generation, data_key, wrapped, "
                "destroyed) VALUES (?, ?, ?, ?, 1) ON CONFLICT (stream_id, "
                "generation) DO UPDATE SET data_key = excluded.data_key, "
                "wrapped = excluded.wrapped, destroyed = 1"
            ),
            [(stream, g, stored, int(wrapped)) for g, stored, wrapped in tombstones],
        )

    @contextmanager
    def own_transaction(self) -> Iterator[Any]:
        """A transaction of its own; on a store set up before keys existed
        (no table), nothing is done."""
        try:
            with self.datastore.transaction(commit=True) as cursor:
                yield cursor
        except Exception as error:
            if not _is_missing_table(error):
                raise

    def checkpoint(self) -> None:
        """After keys were destroyed and committed: makes the database files drop
        their bytes (SQLite's subclass); nothing to do elsewhere."""
