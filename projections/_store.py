"""Where views keep their tables and tracking positions: the ledger's own database.

A view's rows and its tracking position are always written in one transaction, by
a writer holding the view's lock, so a crash at any instant leaves both as they
were before or both as they are after. The SQL of the views is written once, with
``?`` parameters and type names in braces; each dialect fills those in.
"""

from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, Protocol

from eventsourcing.persistence import Tracking, TrackingRecorder

from ledger.log_source import Dialect, LogSource


class Keys(Protocol):
    """The users' data keys as the views use them: ``ledger.log_source.SourceKeys``
    of one ledger, or ``projections._shard_keys.ShardedKeys`` over its shards."""

    def reading(self, cursor: Any = None) -> AbstractContextManager[None]: ...
    def prefetch(self, wanted: Iterable[tuple[str, int]]) -> None: ...
    def seal_cell(
        self, user_id: str, generation: int, plain: bytes
    ) -> bytes | None: ...
    def open_cell(
        self, user_id: str, generation: int, sealed: bytes
    ) -> bytes | None: ...
    def open_event_value(
        self, user_id: str, generation: int, sealed: bytes
    ) -> tuple[Any, Any] | None: ...


class Tx:
    """One transaction on the views' database, in the dialect's terms."""

    def __init__(self, cursor: Any, dialect: Dialect, keys: Keys) -> None:
        self.cursor = cursor
        self.dialect = dialect
        self.keys = keys
        """The ledger's data keys: the views seal personal data with them."""

    def run(self, text: str, params: Sequence[Any] = ()) -> None:
        self.cursor.execute(self.dialect.statement(text), tuple(params))

    def run_many(self, text: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self.cursor.executemany(self.dialect.statement(text), rows)

    def insert(self, table: str, columns: Sequence[str], rows: Sequence[Any]) -> None:
        """Inserts many rows: COPY on PostgreSQL, executemany on SQLite."""
        if rows:
            self.dialect.insert(self.cursor, table, columns, rows)

    def rows(self, text: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        self.run(text, params)
        return [self.dialect.row(row) for row in self.cursor.fetchall()]


class ViewStore:
    """Transactions that hold a view's lock, and the views' tracking positions."""

    def __init__(
        self,
        recorder: TrackingRecorder,
        dialect: Dialect,
        tracking_table: str,
        keys: Keys,
    ) -> None:
        self.recorder: Any = recorder  # the SQL recorders' private helpers are used
        self.dialect = dialect
        self.tracking_table = tracking_table
        self.keys = keys

    @classmethod
    def beside(cls, source: LogSource, *, create: bool = True) -> "ViewStore":
        """A store in the same database (and connection pool) as the ledger; its
        tracking table is created if ``create``."""
        recorder, tracking_table = source.tracking(create=create)
        return cls(recorder, source.dialect, tracking_table, source.keys)

    def with_keys(self, keys: Keys) -> "ViewStore":
        """The same store (database, pool, tracking table) with other keys."""
        return ViewStore(self.recorder, self.dialect, self.tracking_table, keys)

    @contextmanager
    def writing(self, *locks: str) -> Iterator[Tx]:
        """A transaction holding ``locks`` from its start; commits if the body ends.

        Locks are always taken in sorted order (a view's before its rebuild's), so
        two transactions that want some of the same locks never wait on each other.
        """
        with self.recorder.datastore.transaction(commit=True) as cursor:
            for lock in sorted(locks):
                self.dialect.lock(cursor, lock)
            # Keys are read in this transaction: no second pooled connection.
            with self.keys.reading(cursor):
                yield Tx(cursor, self.dialect, self.keys)

    @contextmanager
    def reading(self) -> Iterator[Tx]:
        """A read-only transaction that sees one snapshot throughout."""
        with self.recorder.datastore.transaction(commit=False) as cursor:
            self.dialect.snapshot(cursor)
            with self.keys.reading(cursor):
                yield Tx(cursor, self.dialect, self.keys)

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
