"""Where the log's Merkle tree lives: tables beside the events (SQLite, PostgreSQL).

The tree (``ledger._audit.merkle``) is kept as every complete node, by level and
index, so a root, an inclusion proof or a consistency proof reads O(log n) rows
and never recomputes the tree. Each leaf also has a row naming its event (log
position, stream, version, user), so a check can say which event no longer
matches. ``ctxledger_tree`` holds the tree's size and the log position it has
read up to; it changes in the same transaction as the nodes it counts, under a
lock on that row, so a worker killed at any instant, or two workers at once,
leave every event in the tree exactly once. Signed checkpoints are kept in
``ctxledger_checkpoints``.

All of it is derived data: verification proves it against the events and the
signed checkpoints, and never trusts it unproven.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ledger._store.backends import Dialect

STATE_TABLE = "ctxledger_tree"
NODES_TABLE = "ctxledger_tree_nodes"
LEAVES_TABLE = "ctxledger_tree_leaves"
CHECKPOINTS_TABLE = "ctxledger_checkpoints"
_NODES_PER_QUERY = 400

NodeId = tuple[int, int]
"""A complete subtree: its level and its index at that level."""


class TreeState(NamedTuple):
    """How many leaves the tree holds and the log position it has read up to."""

    size: int
    position: int


class Leaf(NamedTuple):
    """A leaf and the event it stands for."""

    number: int
    """Its index in the tree."""
    position: int
    stream: str
    version: int
    user_id: str


@dataclass(frozen=True)
class Kept:
    """A checkpoint the ledger signed: its size, root and note."""

    size: int
    root: bytes
    note: str


class TreeStore:
    """The tree's tables in one ledger database."""

    def __init__(self, datastore: Any, dialect: Dialect, kind: str) -> None:
        self.datastore = datastore
        self.dialect = dialect
        self._postgres = kind == "postgres"
        self._bytes = "BYTEA" if self._postgres else "BLOB"
        self.state_table = dialect.table(STATE_TABLE)
        self.nodes_table = dialect.table(NODES_TABLE)
        self.leaves_table = dialect.table(LEAVES_TABLE)
        self.checkpoints_table = dialect.table(CHECKPOINTS_TABLE)

    def exists(self) -> bool:
        with self.datastore.transaction(commit=False) as cursor:
            return self.dialect.exists(cursor, STATE_TABLE)

    def create_tables(self) -> None:
        """Creates the tables if they are missing (call under the set-up lock)."""
        big, blob = self.dialect.types["int"], self._bytes
        statements = [
            f"CREATE TABLE IF NOT EXISTS {self.state_table} (id INTEGER PRIMARY KEY, "
            f"size {big} NOT NULL, position {big} NOT NULL)",
            f"CREATE TABLE IF NOT EXISTS {self.nodes_table} (level INTEGER NOT NULL, "
            f"idx {big} NOT NULL, hash {blob} NOT NULL, PRIMARY KEY (level, idx))",
            f"CREATE TABLE IF NOT EXISTS {self.leaves_table} (leaf {big} PRIMARY KEY, "
            f"position {big} NOT NULL, stream_id TEXT NOT NULL, "
            f"version {big} NOT NULL, user_id TEXT NOT NULL)",
            f"CREATE INDEX IF NOT EXISTS ctxledger_tree_leaves_stream ON "
            f"{self.leaves_table} (stream_id, version)",
            f"CREATE TABLE IF NOT EXISTS {self.checkpoints_table} ("
            f"size {big} PRIMARY KEY, root {blob} NOT NULL, note TEXT NOT NULL)",
            f"INSERT INTO {self.state_table} (id, size, position) "  # noqa: S608  (our table name)
            "VALUES (1, 0, 0) ON CONFLICT (id) DO NOTHING",
        ]
        with self.datastore.transaction(commit=True) as cursor:
            for statement in statements:
                cursor.execute(statement)

    # Reading.

    def state(self, cursor: Any = None) -> TreeState:
        query = f"SELECT size, position FROM {self.state_table} WHERE id = 1"  # noqa: S608  (our table name)
        if cursor is not None:
            cursor.execute(query)
            row = cursor.fetchone()
        else:
            with self.datastore.transaction(commit=False) as read:
                read.execute(query)
                row = read.fetchone()
        size, position = self.dialect.row(row) if row else (0, 0)
        return TreeState(int(size), int(position))

    def nodes(
        self, wanted: Iterable[NodeId], cursor: Any = None
    ) -> dict[NodeId, bytes]:
        """The stored hashes of ``wanted`` nodes (those stored: a missing one is
        left out, and the caller says what that means)."""
        ids = sorted(set(wanted))
        found: dict[NodeId, bytes] = {}
        if cursor is None:
            with self.datastore.transaction(commit=False) as read:
                return self.nodes(ids, read)
        for start in range(0, len(ids), _NODES_PER_QUERY):
            where, params = _by_level(ids[start : start + _NODES_PER_QUERY])
            cursor.execute(
                self.dialect.statement(
                    f"SELECT level, idx, hash FROM {self.nodes_table} WHERE {where}"  # noqa: S608  (our table name)
                ),
                params,
            )
            for row in cursor.fetchall():
                level, index, digest = self.dialect.row(row)
                found[int(level), int(index)] = bytes(digest)
        return found

    def leaves(self, first: int, limit: int) -> list[tuple[int, bytes, Leaf | None]]:
        """Up to ``limit`` leaves of the tree from index ``first``: each index,
        hash and the row naming its event (None if that row is gone). The
        leaves are the nodes of level 0, so a leaf whose row was deleted still
        shows; a deleted node shows as a gap in the indexes."""
        query = self.dialect.statement(
            "SELECT n.idx, n.hash, l.position, l.stream_id, l.version, l.user_id "  # noqa: S608  (our table names)
            f"FROM {self.nodes_table} n LEFT JOIN {self.leaves_table} l "
            "ON l.leaf = n.idx WHERE n.level = 0 AND n.idx >= ? "
            "ORDER BY n.idx LIMIT ?"
        )
        with self.datastore.transaction(commit=False) as cursor:
            cursor.execute(query, (first, limit))
            rows = [self.dialect.row(row) for row in cursor.fetchall()]
        return [
            (
                int(i),
                bytes(h),
                None if p is None else Leaf(int(i), int(p), str(s), int(v), str(u)),
            )
            for i, h, p, s, v, u in rows
        ]

    def leaves_of(self, stream: str, below: int) -> list[Leaf]:
        """The stream's leaves among the first ``below``, by version."""
        query = self.dialect.statement(
            "SELECT leaf, position, stream_id, version, user_id "  # noqa: S608  (our table name)
            f"FROM {self.leaves_table} WHERE stream_id = ? AND leaf < ? "
            "ORDER BY version, leaf"
        )
        with self.datastore.transaction(commit=False) as cursor:
            cursor.execute(query, (stream, below))
            rows = [self.dialect.row(row) for row in cursor.fetchall()]
        return [Leaf(int(i), int(p), str(s), int(v), str(u)) for i, p, s, v, u in rows]

    # Writing.

    def locked_state(self, cursor: Any) -> TreeState:
        """The state, locked until the transaction ends (one writer at a time)."""
        if self._postgres:
            cursor.execute(
                f"SELECT size, position FROM {self.state_table} WHERE id = 1 FOR UPDATE"  # noqa: S608  (our table name)
            )
            row = cursor.fetchone()
            size, position = self.dialect.row(row) if row else (0, 0)
            return TreeState(int(size), int(position))
        # SQLite: a write as the first statement takes the database's write lock.
        cursor.execute(f"UPDATE {self.state_table} SET size = size WHERE id = 1")  # noqa: S608  (our table name)
        return self.state(cursor)

    def add(
        self,
        cursor: Any,
        nodes: Sequence[tuple[NodeId, bytes]],
        leaves: Sequence[Leaf],
        state: TreeState,
    ) -> None:
        """Stores new nodes and leaves and the state that counts them."""
        self.dialect.insert(
            cursor,
            self.nodes_table,
            ("level", "idx", "hash"),
            [(level, index, digest) for (level, index), digest in nodes],
        )
        self.dialect.insert(
            cursor,
            self.leaves_table,
            ("leaf", "position", "stream_id", "version", "user_id"),
            list(leaves),
        )
        cursor.execute(
            self.dialect.statement(
                f"UPDATE {self.state_table} SET size = ?, position = ? WHERE id = 1"  # noqa: S608  (our table name)
            ),
            (state.size, state.position),
        )

    # Checkpoints.

    def latest(self) -> Kept | None:
        """The last checkpoint the ledger signed (the largest), if any."""
        found = self.recent(1)
        return found[0] if found else None

    def recent(self, limit: int) -> list[Kept]:
        """The last ``limit`` checkpoints the ledger signed, largest first."""
        with self.datastore.transaction(commit=False) as cursor:
            if not self.dialect.exists(cursor, CHECKPOINTS_TABLE):
                return []
            cursor.execute(
                self.dialect.statement(
                    f"SELECT size, root, note FROM {self.checkpoints_table} "  # noqa: S608  (our table name)
                    "ORDER BY size DESC LIMIT ?"
                ),
                (limit,),
            )
            rows = [self.dialect.row(row) for row in cursor.fetchall()]
        return [Kept(int(size), bytes(root), str(note)) for size, root, note in rows]

    def keep(self, cursor: Any, kept: Kept) -> None:
        """Records a signed checkpoint (a second one of the same size replaces
        the first: both sign the same tree)."""
        cursor.execute(
            self.dialect.statement(
                f"INSERT INTO {self.checkpoints_table} (size, root, note) "  # noqa: S608  (our table name)
                "VALUES (?, ?, ?) ON CONFLICT (size) DO UPDATE SET "
                "root = excluded.root, note = excluded.note"
            ),
            (kept.size, kept.root, kept.note),
        )


def _by_level(nodes: Sequence[NodeId]) -> tuple[str, list[int]]:
    """A condition matching ``nodes``, one ``level = ? AND idx IN (...)`` per
    level, which both databases answer from the primary key (SQLite reads the
    whole table for a row-value ``(level, idx) IN (...)``)."""
    by_level: dict[int, list[int]] = {}
    for level, index in nodes:
        by_level.setdefault(level, []).append(index)
    terms: list[str] = []
    params: list[int] = []
    for level, indexes in by_level.items():
        terms.append(f"(level = ? AND idx IN ({', '.join('?' * len(indexes))}))")
        params += [level, *indexes]
    return " OR ".join(terms), params
