"""What an export carries to prove its events are in the signed log, offline.

The manifest's ``log`` holds the ledger's latest signed checkpoint, and for each
exported event covered by it, its leaf index and RFC 9162 inclusion proof (the
``tlog-proof`` content, with the checkpoint given once for all events). It also
names the user's last leaf in that checkpoint, with its hash and proof: an
export that ends before it (a tail cut from the store before exporting) fails.

``verify_export(path, public_key=...)`` checks the signature with the verifier
key, each exported event's inclusion, and that the export reaches the user's
last signed event (unless the export ends at an ``until``).
"""

import base64
import binascii
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from ledger._audit.chain import Link
from ledger._audit.checkpoint_files import KeyInput, notes_from, verifier_from
from ledger._audit.merkle import leaf_hash, verify_consistency, verify_inclusion
from ledger._audit.notes import Checkpoint, Verifier, open_checkpoint
from ledger._domain.contexts import user_aggregate_id
from ledger._domain.hashing import chain_hash
from ledger.errors import CheckpointError

if TYPE_CHECKING:
    from ledger._audit.export import ExportManifest
    from ledger._audit.log_tree import LogTree
    from ledger._store.tree_store import Kept


class ExportLeaf(BaseModel):
    """An event's leaf in the signed log and its inclusion proof (base64)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int
    leaf: int
    proof: tuple[str, ...]
    leaf_hash: str | None = None
    """The leaf's hash (hex), given for the user's last leaf only."""
    record: dict[str, Any] | None = None
    """For the user's last leaf only: what the chain covers of its event (no
    personal data), so its time and version are proved by the leaf; None when
    the store no longer held that event."""


class ExportConsistency(BaseModel):
    """An RFC 9162 consistency proof (base64) from an earlier checkpoint's size
    to the export's checkpoint."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int
    proof: tuple[str, ...]


class ExportLog(BaseModel):
    """The signed checkpoint an export is proved against, and the proofs."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    checkpoint: str
    """The signed note (C2SP ``signed-note`` of a ``tlog-checkpoint``)."""
    leaves: tuple[ExportLeaf, ...]
    user_last: ExportLeaf | None
    """The user's last leaf in the checkpoint (None: no event of the user)."""
    consistency: tuple[ExportConsistency, ...] = ()
    """Proofs from the sizes of the checkpoints signed before it (the last
    ``EARLIER_CHECKPOINTS``), so an auditor holding one of them can check that
    the export's checkpoint extends it."""


EARLIER_CHECKPOINTS = 16


def prove_export(
    tree: "LogTree", user_id: str, versions: Sequence[int], kept: "Kept | None"
) -> ExportLog | None:
    """The proofs of ``versions`` of the user's stream against ``kept``, the
    ledger's latest signed checkpoint when the export began (taken before the
    events were read, so that none signed later claims events the export did
    not read); None if it had signed none."""
    if kept is None:
        return None
    mine = tree.store.leaves_of(str(user_aggregate_id(user_id)), kept.size)
    by_version = {leaf.version: leaf.number for leaf in mine}
    covered = [(v, by_version[v]) for v in versions if v in by_version]
    last = [(mine[-1].version, mine[-1].number)] if mine else []
    proofs = tree.inclusion_proofs([i for _, i in covered + last], kept.size)
    leaves = [
        ExportLeaf(version=v, leaf=i, proof=_encoded(proof))
        for (v, i), proof in zip(covered + last, proofs, strict=True)
    ]
    user_last = None
    if last:
        digest = tree.leaf_hashes([last[0][1]])[last[0][1]]
        record = tree.chain_record(user_aggregate_id(user_id), last[0][0])
        user_last = leaves.pop().model_copy(
            update={"leaf_hash": digest.hex(), "record": record}
        )
    return ExportLog(
        checkpoint=kept.note,
        leaves=tuple(leaves),
        user_last=user_last,
        consistency=_from_earlier(tree, kept.size),
    )


def _from_earlier(tree: "LogTree", size: int) -> tuple[ExportConsistency, ...]:
    earlier = tree.store.recent(EARLIER_CHECKPOINTS + 1)
    return tuple(
        ExportConsistency(
            size=kept.size, proof=_encoded(tree.consistency_proof(kept.size, size))
        )
        for kept in earlier
        if kept.size < size
    )


def _encoded(proof: Sequence[bytes]) -> tuple[str, ...]:
    return tuple(base64.b64encode(digest).decode("ascii") for digest in proof)


class LogProblem(Exception):
    """The first thing an export's proofs fail on: its version and why."""

    def __init__(self, version: int | None, fault: str, detail: str) -> None:
        super().__init__(detail)
        self.version, self.fault, self.detail = version, fault, detail


def signed_by(
    public_key: KeyInput | None, checkpoint: KeyInput | None
) -> tuple[Verifier | None, list[Checkpoint]]:
    """The verifier of ``public_key`` and the checkpoints the auditor trusts
    (one per log: a sharded ledger's file holds one per shard)."""
    verifier = None if public_key is None else verifier_from(public_key)
    if checkpoint is None:
        return verifier, []
    if verifier is None:
        raise CheckpointError("a trusted checkpoint needs the public_key too")
    return verifier, [open_checkpoint(n, verifier) for n in notes_from(checkpoint)]


def check_log(
    log: ExportLog | None,
    links: Sequence[Link],
    verifier: Verifier,
    manifest: "ExportManifest",
    trusted: Sequence[Checkpoint] = (),
) -> None:
    """Raises LogProblem unless every event is proved in the signed log, the
    export reaches the user's last signed event when that event falls in its
    period, and its checkpoint is no older than ``trusted`` (one the auditor
    holds from where checkpoints are published)."""
    if log is None:
        raise LogProblem(
            None,
            "unproven",
            "the export carries no signed checkpoint: sign one (ctxledger "
            "checkpoint sign), then export again",
        )
    try:
        checkpoint = open_checkpoint(log.checkpoint, verifier)
    except CheckpointError as error:
        raise LogProblem(None, "altered", f"its checkpoint: {error}") from None
    _check_trusted(checkpoint, trusted, log.consistency)
    proved = {leaf.version: leaf for leaf in log.leaves}
    for link in links:
        _check_event(link, proved.get(link.version), checkpoint)
    if log.user_last is not None:
        _check_last(log.user_last, links, checkpoint, manifest)


def _check_trusted(
    checkpoint: Checkpoint,
    trusted: Sequence[Checkpoint],
    consistency: Sequence[ExportConsistency],
) -> None:
    """The export's checkpoint extends the one the auditor holds of its log:
    the same, or a consistency proof from it that the export carries."""
    if not trusted:
        return
    mine = [held for held in trusted if held.origin == checkpoint.origin]
    if not mine:
        raise LogProblem(
            None,
            "unproven",
            f"no checkpoint you trust is of its log {checkpoint.origin!r}",
        )
    held = mine[0]
    if (held.size, held.root) == (checkpoint.size, checkpoint.root):
        return
    proofs = [c.proof for c in consistency if c.size == held.size]
    if (
        held.size > checkpoint.size
        or not proofs
        or not _consistent(held, checkpoint, proofs[0])
    ):
        raise LogProblem(
            None,
            "unproven",
            f"it is proved against a checkpoint of {checkpoint.size} events that "
            f"is not shown to extend the one you trust ({held.size} events): "
            "export again with --sign-with, or check the log with checkpoint verify",
        )


def _consistent(held: Checkpoint, checkpoint: Checkpoint, proof: Sequence[str]) -> bool:
    hashes = _decoded(proof)
    return hashes is not None and verify_consistency(
        held.size, checkpoint.size, held.root, checkpoint.root, hashes
    )


def _check_event(link: Link, leaf: ExportLeaf | None, checkpoint: Checkpoint) -> None:
    if leaf is None:
        raise LogProblem(
            link.version,
            "unproven",
            f"it is not in the export's checkpoint ({checkpoint.size} events): "
            "sign a checkpoint after it was written, then export again",
        )
    digest = leaf_hash(bytes.fromhex(link.hash or ""))
    if not _included(leaf, digest, checkpoint):
        raise LogProblem(
            link.version,
            "altered",
            f"it is not the event the signed log holds at leaf {leaf.leaf}",
        )


def _check_last(
    last: ExportLeaf,
    links: Sequence[Link],
    checkpoint: Checkpoint,
    manifest: "ExportManifest",
) -> None:
    """The user's last signed event: proved, and in the export if it falls in
    the export's period."""
    if last.record is None:
        raise LogProblem(
            last.version,
            "missing",
            f"the signed log holds version {last.version} of this user (leaf "
            f"{last.leaf}), which the store no longer held when it was exported",
        )
    try:
        digest = leaf_hash(bytes.fromhex(chain_hash(last.record)))
    except (KeyError, TypeError, AttributeError, ValueError, RecursionError):
        digest = b""  # not an event's JSON form: not proved
    if (
        not digest
        or last.leaf_hash != digest.hex()
        or not _included(last, digest, checkpoint)
        or last.record.get("user_id") != manifest.user_id
        or last.record.get("version") != last.version
    ):
        raise LogProblem(
            last.version, "altered", "the user's last signed event is not proved"
        )
    ended = links[-1].version if links else 0
    if _in_period(last.record, manifest) and ended < last.version:
        raise LogProblem(
            ended + 1,
            "missing",
            f"the signed log holds version {last.version} of this user (leaf "
            f"{last.leaf}) in the export's period; the export ends at version "
            f"{ended}: events were cut from the store",
        )


def _in_period(record: dict[str, Any], manifest: "ExportManifest") -> bool:
    try:
        at = datetime.fromisoformat(str(record.get("occurred_at")))
    except ValueError:
        return True  # proved, yet no time: judge it as in the period
    if at.tzinfo is None:
        return True
    return (manifest.since is None or at >= manifest.since) and (
        manifest.until is None or at < manifest.until
    )


def _included(leaf: ExportLeaf, digest: bytes, checkpoint: Checkpoint) -> bool:
    proof = _decoded(leaf.proof)
    return proof is not None and verify_inclusion(
        leaf.leaf, checkpoint.size, digest, proof, checkpoint.root
    )


def _decoded(proof: Sequence[str]) -> list[bytes] | None:
    try:
        return [base64.b64decode(item, validate=True) for item in proof]
    except (binascii.Error, ValueError):
        return None
