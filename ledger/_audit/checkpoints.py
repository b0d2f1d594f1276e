"""Signed checkpoints of the log's Merkle tree, and their verification.

A checkpoint (C2SP ``tlog-checkpoint``: origin, tree size, root hash) is signed
as a C2SP ``signed-note`` with Ed25519 (``ledger._audit.notes``). Signing first
takes every event up to the log's safe head into the tree, and refuses a tree
that does not extend the last checkpoint the ledger signed (a log must never
sign two inconsistent checkpoints). Verifying proves, from the signature on, that
the log still extends a checkpoint: the stored tree by an RFC 9162 consistency
proof, then every leaf of the stored tree against the event the log holds at
its place now, so the first event deleted, altered, added or reordered is named
with its user and version.
"""

from collections.abc import Callable, Iterator
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ledger._audit.log_tree import BATCH, LoggedLeaf, LogTree
from ledger._audit.merkle import verify_consistency
from ledger._audit.notes import Checkpoint, Signer, sign_checkpoint
from ledger._store.tree_store import Kept, Leaf
from ledger.errors import CheckpointError

LeafFaultKind = Literal["missing", "altered", "added", "reordered", "inconsistent"]
Departed = Callable[[Leaf, bytes], bool]
"""Whether a leaf's event left this log for another shard's, which holds it
(``ledger._sharded_checkpoints``)."""


class SignedCheckpoint(BaseModel):
    """A checkpoint the ledger signed: the note, and what it states."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    origin: str
    size: int
    root_hash: str
    """The tree's root, hex."""
    note: str
    """The signed note (C2SP ``signed-note`` of a ``tlog-checkpoint``)."""


class LeafFault(BaseModel):
    """The first leaf of the tree that the log no longer matches."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fault: LeafFaultKind
    leaf: int | None
    """Its index in the tree (None when no leaf can be named)."""
    user_id: str | None
    version: int | None
    position: int | None
    """Its position in the log."""
    detail: str

    def __str__(self) -> str:
        if self.leaf is None:
            return f"{self.fault}: {self.detail}"
        return (
            f"leaf {self.leaf} (user {self.user_id!r}, version {self.version}, "
            f"log position {self.position}): {self.fault}: {self.detail}"
        )


class CheckpointReport(BaseModel):
    """Whether the log still extends a signed checkpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    origin: str
    checkpoint_size: int
    tree_size: int
    consistent: bool
    """Whether the stored tree extends the checkpoint (RFC 9162 consistency)."""
    fault: LeafFault | None

    @property
    def holds(self) -> bool:
        return self.consistent and self.fault is None


def sign_tree(tree: LogTree, signer: Signer, origin: str) -> SignedCheckpoint:
    """Catches the tree up to the safe head, checks it extends the last
    checkpoint signed, signs it and keeps the note."""
    head = tree.catch_up()
    last = tree.store.latest()
    if last is not None and not _extends(tree, last, head.size, head.root):
        raise CheckpointError(
            f"refusing to sign: the tree of {head.size} leaves does not extend the "
            f"checkpoint of {last.size} leaves this ledger signed last, so the log "
            "or its tree was rewritten; find where with `ctxledger checkpoint "
            "verify` on that checkpoint"
        )
    note = sign_checkpoint(Checkpoint(origin, head.size, head.root), signer)
    with tree.store.datastore.transaction(commit=True) as cursor:
        tree.store.keep(cursor, Kept(head.size, head.root, note))
    return SignedCheckpoint(
        origin=origin, size=head.size, root_hash=head.root.hex(), note=note
    )


def verify_tree(
    tree: LogTree, checkpoint: Checkpoint, departed: Departed | None = None
) -> CheckpointReport:
    """Whether the log (through its tree) still extends ``checkpoint``, whose
    signature the caller has checked."""
    head = tree.catch_up()
    kept = Kept(checkpoint.size, checkpoint.root, "")
    consistent = _extends(tree, kept, head.size, head.root)
    fault = first_mismatch(tree, departed)
    if fault is None and not consistent:
        fault = LeafFault(
            fault="inconsistent",
            leaf=None,
            user_id=None,
            version=None,
            position=None,
            detail=(
                f"the log's first {checkpoint.size} events do not give the "
                "checkpoint's root: the log and its tree were both rewritten, "
                f"the tree now holds {head.size} leaves"
            ),
        )
    return CheckpointReport(
        origin=checkpoint.origin,
        checkpoint_size=checkpoint.size,
        tree_size=head.size,
        consistent=consistent,
        fault=fault,
    )


def _extends(tree: LogTree, kept: Kept, size: int, root: bytes) -> bool:
    if size < kept.size:
        return False
    proof = tree.consistency_proof(kept.size, size)
    return verify_consistency(kept.size, size, kept.root, root, proof)


def first_mismatch(tree: LogTree, departed: Departed | None = None) -> LeafFault | None:
    """The first leaf of the stored tree that the log does not hold as it is,
    or an event of the log (up to where the tree has read) the tree lacks. A
    leaf whose event ``departed`` to another shard is passed over."""
    logged = _log_leaves(tree)
    found = next(logged, None)
    for leaf, digest in _tree_leaves(tree):
        gone = found is None or (
            found.hash != digest and found.leaf.position > leaf.position
        )
        if gone and departed is not None and departed(leaf, digest):
            continue
        if found is None:
            return _fault("missing", leaf, "the log ends before it")
        if found.hash != digest:
            return _classify(leaf, found)
        found = next(logged, None)
    extra = found
    if extra is not None:
        return _fault(
            "added", extra.leaf, "an event the tree never took stands in the log"
        )
    return None


def _classify(leaf: Leaf, found: LoggedLeaf) -> LeafFault:
    other = found.leaf
    if other.position > leaf.position:
        return _fault("missing", leaf, "its event is no longer in the log")
    if other.position < leaf.position:
        return _fault(
            "added",
            other._replace(number=leaf.number),
            "an event the tree never took stands before this leaf's event",
        )
    if (other.stream, other.version) != (leaf.stream, leaf.version):
        return _fault(
            "reordered",
            leaf,
            f"its place in the log holds version {other.version} of "
            f"{'its user' if other.stream == leaf.stream else 'another stream'}",
        )
    problem = found.problem or "its hash is not the one the tree took"
    return _fault("altered", leaf, problem)


def _fault(kind: LeafFaultKind, leaf: Leaf, detail: str) -> LeafFault:
    return LeafFault(
        fault=kind,
        leaf=None if leaf.number < 0 else leaf.number,
        user_id=leaf.user_id or None,
        version=leaf.version,
        position=leaf.position,
        detail=detail,
    )


def _tree_leaves(tree: LogTree) -> Iterator[tuple[Leaf, bytes]]:
    first = 0
    while page := tree.store.leaves(first, BATCH):
        yield from page
        first = page[-1][0].number + 1


def _log_leaves(tree: LogTree) -> Iterator[LoggedLeaf]:
    """The log's events up to the position the tree has read, as leaves."""
    end = tree.store.state().position
    after = 0
    while after < end:
        rows = tree.log_rows(after, BATCH, end)
        if not rows:
            return
        yield from tree.read(rows)
        after = rows[-1][0]
