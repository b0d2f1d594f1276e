"""The hash that links each user's events.

Every event carries ``prev_hash``: the SHA-256 of the canonical encoding of the
user's previous event (its ``LedgerEvent`` form, ``prev_hash`` included). The
first event of a user carries ``GENESIS_HASH``. The canonical encoding is JSON with
sorted keys, no whitespace and UTF-8, of the event's JSON form, so an export of
``LedgerEvent.model_dump(mode="json")`` objects can be re-hashed without the ledger.
"""

import hashlib
import json
from collections.abc import Mapping
from typing import Any

GENESIS_HASH = "0" * 64
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_encoding(record: Mapping[str, Any]) -> bytes:
    """The bytes that are hashed for one event in its JSON form."""
    return _CANONICAL.encode(record).encode("utf-8")


def record_hash(record: Mapping[str, Any]) -> str:
    """The SHA-256 (hex) of an event's canonical encoding."""
    return hashlib.sha256(canonical_encoding(record)).hexdigest()


# Format 2: personal data is sealed (see ledger/store/keys.py) and the chain covers
# a commitment to it instead of its value, so the chain still holds once the value
# is erased. The commitment is salted with 32 random bytes kept only inside the
# sealed value: once the user's key is destroyed it cannot be brute-forced.
_COMMITMENT_LABEL = b"ctxledger metadata commitment\n"
SALT_BYTES = 32
SEALED_DETAILS = ("metadata", "metadata_salt", "erased")
"""Keys of an event's details that the chain does not cover in format 2."""


def metadata_commitment(salt: str, metadata: Mapping[str, Any]) -> str:
    """The commitment (SHA-256, hex) to ``metadata`` under ``salt`` (hex)."""
    digest = hashlib.sha256(_COMMITMENT_LABEL)
    digest.update(bytes.fromhex(salt))
    digest.update(canonical_encoding(metadata))
    return digest.hexdigest()


def chain_form(record: Mapping[str, Any]) -> dict[str, Any]:
    """What the chain hashes of an event in its JSON form (``LedgerEvent``).

    Format 1 (no ``metadata_commitment`` in its details): the record as it is.
    Format 2: the record without the sealed values (metadata and its salt) and
    without the erasure mark; the commitment stands for them.
    """
    details = record["details"]
    if details.get("metadata_commitment") is None:
        return dict(record)
    kept = {k: v for k, v in details.items() if k not in SEALED_DETAILS}
    return {**record, "details": kept}


def chain_hash(record: Mapping[str, Any]) -> str:
    """The hash the next event's ``prev_hash`` holds (``chain_form``'s)."""
    return record_hash(chain_form(record))
