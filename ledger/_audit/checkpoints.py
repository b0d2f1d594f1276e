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

import logging

from pydantic import BaseModel, ConfigDict

from ledger._audit.log_tree import LogTree, TreeHead
from ledger._audit.merkle import EMPTY_ROOT, verify_consistency
from ledger._audit.notes import Checkpoint, Signer, sign_checkpoint
from ledger._audit.tree_scan import Departed, LeafFault, Scan, scan
from ledger._store.failures import DATABASE_ERRORS
from ledger._store.tree_store import Kept
from ledger.errors import CheckpointError, LedgerCorrupted

_log = logging.getLogger(__name__)
__all__ = ["CheckpointReport", "Departed", "LeafFault", "SignedCheckpoint"]


class SignedCheckpoint(BaseModel):
    """A checkpoint the ledger signed: the note, and what it states."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    origin: str
    size: int
    root_hash: str
    """The tree's root, hex."""
    note: str
    """The signed note (C2SP ``signed-note`` of a ``tlog-checkpoint``)."""


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
    # The tree is derived data: what it took since the last checkpoint is
    # proved against the log's events before it is signed.
    base = last or Kept(0, EMPTY_ROOT, "")
    if tree.proved_root(base.size, base.root, head.size) != head.root:
        raise CheckpointError(
            f"refusing to sign: the tree's leaves after the checkpoint of "
            f"{base.size} leaves are not the log's events; find where with "
            "`ctxledger checkpoint verify`"
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
    """Whether the log still extends ``checkpoint`` (whose signature the caller
    checked), and the first leaf of the tree the log no longer matches."""
    head = _caught_up(tree)
    kept = Kept(checkpoint.size, checkpoint.root, "")
    try:
        consistent = _extends(tree, kept, head.size, head.root)
    except LedgerCorrupted:  # a node the proof needs was deleted
        consistent = False
    found = scan(tree, checkpoint.size, departed)
    fault = _verdict(found, checkpoint, consistent)
    return CheckpointReport(
        origin=checkpoint.origin,
        checkpoint_size=checkpoint.size,
        tree_size=head.size,
        consistent=consistent,
        fault=fault,
    )


def _caught_up(tree: LogTree) -> TreeHead:
    """The tree caught up to the safe head; as it stands when the database
    refuses the write (an auditor's read-only role): the events it has not
    taken yet are after any checkpoint it signed."""
    try:
        return tree.catch_up()
    except DATABASE_ERRORS as error:
        _log.warning("verifying against the tree as it stands: %s", error)
        return tree.head()


def _verdict(found: Scan, checkpoint: Checkpoint, consistent: bool) -> LeafFault | None:
    """The first fault: the first mismatch when the tree's own leaves give the
    checkpoint's root (they are then the signed ones); else the tree's tables
    were changed, and the log's own root says whether the log was too."""
    size, root = checkpoint.size, checkpoint.root
    if found.tree_root.size >= size and found.tree_root.root() == root:
        if found.mismatch is not None or consistent:
            return found.mismatch
        return _inconsistent(
            "the tree's inner nodes were changed; the log and "
            "the tree's leaves extend it"
        )
    where = "" if found.mismatch is None else f"; first difference: {found.mismatch}"
    if found.log_root.size >= size and found.log_root.root() == root:
        return _inconsistent(
            "the log extends it, but the tree's leaves no longer give its root: "
            f"the tree's tables were changed{where}"
        )
    held = max(found.log_root.size, found.tree_root.size)
    if held < size:
        return LeafFault(
            fault="missing",
            leaf=None,
            user_id=None,
            version=None,
            position=None,
            detail=(
                f"the log holds {found.log_root.size} event(s) and the tree "
                f"{found.tree_root.size} leaf(s), fewer than the checkpoint's {size}, "
                "so events it covers are gone: the events from leaf "
                f"{held} on if the log was only cut at its end (a restore of an "
                "older backup not written to since); else (events deleted, the "
                "tree rebuilt from the altered log, or a restore written to since) "
                "which ones cannot be named without the checkpoint's own tree"
                f"{where}"
            ),
        )
    if found.mismatch is None:
        return _inconsistent(
            f"the log and its tree agree with each other, but their first {size} "
            "events do not give the checkpoint's root: this log does not extend it "
            "(it was restored from a backup older than the checkpoint and written "
            "to since, or rewritten along with its tree); which event differs "
            "cannot be named without the checkpoint's own tree"
        )
    return _inconsistent(
        f"the log's first {size} events do not give its root, and the tree's "
        f"tables were changed too, so the first changed event cannot be named{where}"
    )


def _inconsistent(detail: str) -> LeafFault:
    return LeafFault(
        fault="inconsistent",
        leaf=None,
        user_id=None,
        version=None,
        position=None,
        detail=detail,
    )


def _extends(tree: LogTree, kept: Kept, size: int, root: bytes) -> bool:
    if size < kept.size:
        return False
    proof = tree.consistency_proof(kept.size, size)
    return verify_consistency(kept.size, size, kept.root, root, proof)
