"""The Merkle tree over one ledger's log, kept like a view.

Its leaves are the events in log order; a leaf's data is the event's chain hash
(``hashing.chain_hash``: the value the user's next event carries as
``prev_hash``), computed by the readers' one decoder. The chain form holds no
personal data, so an erasure leaves every leaf as it was. The tree reads the
log up to its safe head only, so an event that commits late is never passed
over, and it counts what it took in the same transaction as its nodes
(``ledger._store.tree_store``), so a worker killed at any instant resumes
exactly where it stopped.
"""

from collections.abc import Sequence
from typing import Any, NamedTuple
from uuid import UUID

from ledger._audit.merkle import (
    Frontier,
    NodeId,
    consistency_nodes,
    fold,
    inclusion_nodes,
    leaf_hash,
    new_nodes,
    root_nodes,
)
from ledger._domain.hashing import record_hash
from ledger._store.application import LedgerApplication
from ledger._store.backends import LogRow, safe_head
from ledger._store.chain_reads import exact_read, named_user
from ledger._store.records import as_uuid
from ledger._store.tree_store import Leaf, TreeState, TreeStore
from ledger.errors import LedgerConfigError, LedgerCorrupted

BATCH = 2_000
"""Events the tree takes in one transaction."""


class TreeHead(NamedTuple):
    """The tree's size (leaves) and root hash."""

    size: int
    root: bytes


class StoredRow(NamedTuple):
    """A log row as ``chain_reads`` reads a stored event."""

    originator_id: UUID | str
    originator_version: int
    topic: str
    state: bytes


class LoggedLeaf(NamedTuple):
    """An event of the log as the tree sees it: the leaf's row and its hash
    (None, with ``problem``, when the event cannot be read)."""

    leaf: Leaf
    hash: bytes | None
    problem: str | None = None


class LogTree:
    """The tree of one ledger database (a shard's, with shards)."""

    def __init__(self, app: LedgerApplication) -> None:
        if app.storage.kind == "memory":
            raise LedgerConfigError(
                "a memory:// ledger keeps no Merkle tree or checkpoints: its log "
                "ends with its process; use a SQLite file or PostgreSQL"
            )
        self._app = app
        datastore = app.recorder.datastore  # type: ignore[attr-defined]
        self.store = TreeStore(datastore, app.backend.dialect(), app.storage.kind)
        self._ready = False

    def ensure_tables(self) -> None:
        """Creates the tree's tables on first use."""
        if self._ready or self.store.exists():
            self._ready = True
            return
        with self._app.backend.setup_lock():
            self.store.create_tables()
        self._ready = True

    def catch_up(self, up_to: int | None = None) -> TreeHead:
        """Takes every event up to ``up_to`` (the log's safe head when None) into
        the tree; the tree's head after it."""
        self.extend(up_to)
        return self.head()

    def extend(self, up_to: int | None = None) -> int:
        """``catch_up`` without reading the root: the tree's size after it."""
        self.ensure_tables()
        head = safe_head(self._app.log_reader) if up_to is None else up_to
        while (state := self.store.state()).position < head:
            rows = self.log_rows(state.position, BATCH, head)
            if not rows:
                break
            self._extend(state, [self._checked(row) for row in self.read(rows)])
        return state.size

    def proved_root(self, proved: int, root: bytes, size: int) -> bytes | None:
        """The root of the first ``size`` leaves as the log gives it: the frontier
        of the first ``proved`` leaves, if it folds to ``root`` (a checkpoint's),
        extended by the log's events the tree took after them, read and hashed
        again. None when that frontier does not give ``root`` or the log does
        not hold as many events there."""
        hashes = self._hashes(root_nodes(proved))
        if fold(hashes) != root:
            return None
        frontier = Frontier.of(proved, hashes)
        after, end = self._position(proved - 1), self._position(size - 1)
        if after is None or end is None:
            return None
        while after < end and (rows := self.log_rows(after, BATCH, end)):
            for _, digest in map(self._checked, self.read(rows)):
                frontier.append(digest)
            after = rows[-1][0]
        return frontier.root() if frontier.size == size else None

    def _position(self, index: int) -> int | None:
        """The log position of leaf ``index`` (0 before the first leaf)."""
        if index < 0:
            return 0
        found = self.store.leaves(index, 1)
        if not found or found[0][0] != index or found[0][2] is None:
            return None
        return found[0][2].position

    def head(self) -> TreeHead:
        """The tree as stored now."""
        self.ensure_tables()
        size = self.store.state().size
        return TreeHead(size, self.root(size))

    def root(self, size: int) -> bytes:
        """The root of the tree's first ``size`` leaves."""
        return fold(self._hashes(root_nodes(size)))

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 inclusion proof of leaf ``index`` in the tree of ``size``."""
        return self._proof(inclusion_nodes(index, size))

    def inclusion_proofs(self, indexes: Sequence[int], size: int) -> list[list[bytes]]:
        """``inclusion_proof`` of each of ``indexes``, read together."""
        groups = [inclusion_nodes(index, size) for index in indexes]
        proof = self._proof([group for each in groups for group in each])
        proofs, start = [], 0
        for each in groups:
            proofs.append(proof[start : start + len(each)])
            start += len(each)
        return proofs

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        """RFC 9162 consistency proof from the tree of ``old`` leaves to ``new``."""
        return self._proof(consistency_nodes(old, new))

    def leaf_hashes(self, indexes: Sequence[int]) -> dict[int, bytes]:
        """The stored hashes of these leaves."""
        found = self.store.nodes((0, i) for i in indexes)
        return {index: digest for (_, index), digest in found.items()}

    def log_rows(self, after: int, limit: int, up_to: int) -> list[LogRow]:
        """The log's rows after position ``after``, at most ``up_to``."""
        return self._app.backend.log_rows(self._app.log_reader, after, limit, up_to)

    def read(self, rows: Sequence[LogRow], *, exact: bool = False) -> list[LoggedLeaf]:
        """The log's rows as leaves, decoded by the readers' one decoder; with
        ``exact``, as verification reads them (``chain_reads.exact_read``): an
        event filed in another user's stream, or whose metadata is not what its
        commitment was made of, is a problem, not a leaf."""
        app = self._app
        streams = {stream: as_uuid(stream) for stream in {row[1] for row in rows}}
        names = {stream: str(uuid) for stream, uuid in streams.items()}
        leaf = self._exact_leaf if exact else self._leaf
        with app.keys.reading():
            app.keys.prefetch_streams(streams.values())
            return [leaf(row, names[row[1]]) for row in rows]

    def chain_record(self, stream: UUID, version: int) -> dict[str, Any] | None:
        """What the chain covers of the stream's event ``version`` as the log
        holds it (no personal data); None if the log has no such event."""
        app = self._app
        rows = app.backend.stream_rows(app.log_reader, stream, version - 1, 1)
        if not rows or rows[0][0] != version:
            return None
        _, topic, state = rows[0]
        with app.keys.reading():
            record = app.records.read_row(stream, version, topic, state)
        return record.chain_record()

    def _exact_leaf(self, row: LogRow, stream: str) -> LoggedLeaf:
        position, stored_stream, version, topic, state = row
        stored = StoredRow(stored_stream, version, topic, state)
        read = exact_read(stored, self._app.records)
        if isinstance(read, str):
            user = named_user(stored) or ""
            return LoggedLeaf(Leaf(-1, position, stream, version, user), None, read)
        leaf = Leaf(-1, position, stream, version, read.user_id)
        return LoggedLeaf(leaf, leaf_hash(bytes.fromhex(read.hash)))

    def _leaf(self, row: LogRow, stream: str) -> LoggedLeaf:
        position, stored_stream, version, topic, state = row
        try:
            record = self._app.records.read_row(stored_stream, version, topic, state)
            chain = bytes.fromhex(record_hash(record.chain_record()))
        except LedgerConfigError:
            raise
        except Exception as error:  # noqa: BLE001  (reported with its position)
            where = Leaf(-1, position, stream, version, "")
            return LoggedLeaf(where, None, " ".join(str(error).split())[:300])
        leaf = Leaf(-1, position, stream, version, record.user_id)
        return LoggedLeaf(leaf, leaf_hash(chain))

    def _checked(self, logged: LoggedLeaf) -> tuple[Leaf, bytes]:
        leaf = logged.leaf
        if logged.hash is None:
            raise LedgerCorrupted(
                leaf.user_id or leaf.stream,
                f"the event at log position {leaf.position} (version {leaf.version}) "
                f"cannot be read, so the Merkle tree stops before it: {logged.problem}",
            )
        return leaf, logged.hash

    def _extend(self, seen: TreeState, logged: list[tuple[Leaf, bytes]]) -> None:
        """Adds the leaves in one transaction, if no other worker added any
        since ``seen`` (then the caller reads the state again)."""
        with self.store.datastore.transaction(commit=True) as cursor:
            state = self.store.locked_state(cursor)
            if state != seen:
                return
            known = self.store.nodes(root_nodes(state.size), cursor)
            created: list[tuple[NodeId, bytes]] = []
            leaves: list[Leaf] = []
            size = state.size
            for leaf, digest in logged:
                for node, hashed in new_nodes(size, digest, known.__getitem__):
                    known[node] = hashed
                    created.append((node, hashed))
                leaves.append(Leaf(size, *leaf[1:]))
                size += 1
            last = logged[-1][0].position
            self.store.add(cursor, created, leaves, TreeState(size, last))

    def _hashes(self, nodes: Sequence[NodeId]) -> list[bytes]:
        found = self.store.nodes(nodes)
        missing = [node for node in nodes if node not in found]
        if missing:
            level, index = missing[0]
            raise LedgerCorrupted(
                "(the log's Merkle tree)",
                f"node {index} at level {level} is missing from the tree's table",
            )
        return [found[node] for node in nodes]

    def _proof(self, groups: Sequence[Sequence[NodeId]]) -> list[bytes]:
        wanted = [node for group in groups for node in group]
        hashes = dict(zip(wanted, self._hashes(wanted), strict=True))
        return [fold([hashes[node] for node in group]) for group in groups]
