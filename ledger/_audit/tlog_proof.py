"""Offline inclusion proofs in the C2SP format (c2sp.org/tlog-proof): a header,
an optional extra line, the leaf index, the proof's hashes, a blank line and the
signed checkpoint verbatim; malformed text raises ``CheckpointError``."""

from collections.abc import Mapping, Sequence
from typing import Any, cast

from pydantic import ValidationError

from ledger._audit.checkpoint_files import KeyInput, verifier_from
from ledger._audit.merkle import leaf_hash, verify_inclusion
from ledger._audit.notes import (
    _HASH_SIZE,
    Checkpoint,
    _b64,
    _b64decode,
    _decimal,
    open_checkpoint,
    split_note,
)
from ledger._domain.hashing import chain_hash, commitment_opens
from ledger._domain.models import LedgerEvent
from ledger.errors import CheckpointError

PROOF_HEADER = "c2sp.org/tlog-proof@v1"


def format_proof(
    index: int, proof: Sequence[bytes], note: str, extra: bytes | None = None
) -> str:
    """A c2sp.org/tlog-proof: header, optional extra, index, the inclusion proof's
    hashes, a blank line and the signed checkpoint verbatim."""
    _decimal(str(index), "the leaf index")
    if any(not isinstance(h, bytes) or len(h) != _HASH_SIZE for h in proof):
        raise CheckpointError("every hash of an inclusion proof must be 32 bytes")
    _check_proof_note(note)
    lines = [PROOF_HEADER]
    if extra is not None:
        lines.append(f"extra {_b64(extra)}")
    lines.append(f"index {index}")
    lines.extend(_b64(h) for h in proof)
    return "\n".join(lines) + "\n\n" + note


def parse_proof(text: str) -> tuple[int, list[bytes], str]:
    """The leaf index, inclusion proof and signed checkpoint of a tlog-proof."""
    index, proof, note, _extra = parse_proof_with_extra(text)
    return index, proof, note


def parse_proof_with_extra(text: str) -> tuple[int, list[bytes], str, bytes | None]:
    """``parse_proof`` with the unauthenticated extra data (None when absent)."""
    head, separator, note = text.partition("\n\n")
    if not separator:
        raise CheckpointError("the proof has no blank line before its checkpoint")
    lines = head.split("\n")
    if lines[0] != PROOF_HEADER:
        raise CheckpointError(f"a tlog proof must start with the line {PROOF_HEADER}")
    extra = None
    rest = lines[1:]
    if rest and rest[0].startswith("extra "):
        extra = _b64decode(rest.pop(0).removeprefix("extra "), "the proof's extra data")
    if not rest or not rest[0].startswith("index "):
        raise CheckpointError("the proof has no 'index N' line after its header")
    index = _decimal(rest.pop(0).removeprefix("index "), "the leaf index")
    proof = [_proof_hash(line) for line in rest]
    _check_proof_note(note)
    return index, proof, note, extra


def _proof_hash(line: str) -> bytes:
    data = _b64decode(line, "an inclusion proof line")
    if len(data) != _HASH_SIZE:
        raise CheckpointError(f"inclusion proof hash {line[:50]!r} is not 32 bytes")
    return data


def _check_proof_note(note: str) -> None:
    """The checkpoint of a proof must be a well-formed note of a checkpoint; its
    signatures are checked by ``open_checkpoint``."""
    text, _lines = split_note(note)
    Checkpoint.parse(text)


def verify_event_proof(
    proof: str, event: LedgerEvent | Mapping[str, Any], public_key: KeyInput
) -> bool:
    """Whether ``proof`` (from ``prove_event``) proves ``event`` in a checkpoint
    signed by ``public_key`` (text or file). The event is given as written: an
    export's line (its JSON), or a ``LedgerEvent`` of a class never upcast.
    Shown metadata must be what its commitment was made of. CheckpointError if
    the proof or the event is malformed, or the signature does not verify."""
    index, hashes, note = parse_proof(proof)
    checkpoint = open_checkpoint(note, verifier_from(public_key))
    record = _written(event)
    if not _committed(record["details"]):
        return False
    digest = leaf_hash(bytes.fromhex(chain_hash(record)))
    return verify_inclusion(index, checkpoint.size, digest, hashes, checkpoint.root)


def _written(event: object) -> dict[str, Any]:
    if isinstance(event, LedgerEvent):
        return event.model_dump(mode="json")
    try:
        LedgerEvent.model_validate(event)
    except ValidationError as error:
        raise CheckpointError(
            f"the event is not a LedgerEvent's JSON form: {error.error_count()} "
            "problem(s), first: " + str(error.errors()[0]["msg"])
        ) from None
    return dict(cast(Mapping[str, Any], event))


def _committed(details: Mapping[str, Any]) -> bool:
    """Whether shown metadata is what the event's commitment was made of."""
    commitment = details.get("metadata_commitment")
    metadata, salt = details.get("metadata"), details.get("metadata_salt")
    if commitment is None or (metadata is None and salt is None):
        return True
    return commitment_opens(commitment, salt, metadata)
