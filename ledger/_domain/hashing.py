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

import orjson

GENESIS_HASH = "0" * 64
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)
"""The definition of the canonical encoding; orjson is a faster way to the same
bytes, taken only where it is sure to give them."""
_ORJSON_OPTIONS = (
    orjson.OPT_SORT_KEYS
    | orjson.OPT_PASSTHROUGH_SUBCLASS
    | orjson.OPT_PASSTHROUGH_DATETIME
    | orjson.OPT_PASSTHROUGH_DATACLASS
)
_SCALARS = frozenset({str, int, bool, type(None)})
_FIXED_LOW, _FIXED_HIGH = 1e-4, 1e16
"""``repr`` writes a float between these without an exponent, as orjson does."""


def canonical_encoding(record: Mapping[str, Any]) -> bytes:
    """The bytes that are hashed for one event in its JSON form: those of
    ``json.dumps(record, sort_keys=True, separators=(",", ":"),
    ensure_ascii=False, allow_nan=False)`` in UTF-8, and its errors."""
    if _plain(record):
        try:
            return orjson.dumps(record, option=_ORJSON_OPTIONS)
        except orjson.JSONEncodeError:
            pass  # a key that is not a str, an int past 64 bits, a deep nesting
    return _CANONICAL.encode(record).encode("utf-8")


def _plain(value: object) -> bool:
    """Whether ``value`` holds only what both encoders write alike: str, int,
    bool, None, dicts, lists and tuples of exactly these types, and floats that
    ``repr`` writes without an exponent. orjson writes NaN as null, ``1e-7`` for
    ``1e-07``, ``0.00001`` for ``1e-05``, and UUIDs, enums and subclasses its own
    way; the standard encoder then decides."""
    kind = type(value)
    items: Any
    if kind is dict:
        items = value.values()  # type: ignore[attr-defined]
    elif kind is list or kind is tuple:
        items = value
    elif kind is float:
        return value == 0.0 or _FIXED_LOW <= abs(value) < _FIXED_HIGH  # type: ignore[arg-type]
    else:
        return kind in _SCALARS
    try:
        for item in items:
            kind = type(item)
            if kind in _SCALARS:
                continue
            if kind is float:
                if not (item == 0.0 or _FIXED_LOW <= abs(item) < _FIXED_HIGH):
                    return False
            elif not _plain(item):
                return False
    except RecursionError:
        return False  # nested too deep for orjson too: the standard encoder decides
    return True


def record_hash(record: Mapping[str, Any]) -> str:
    """The SHA-256 (hex) of an event's canonical encoding."""
    return hashlib.sha256(canonical_encoding(record)).hexdigest()


# Format 2: personal data is sealed (see ledger/_store/keys.py) and the chain covers
# a commitment to it instead of its value, so the chain still holds once the value
# is erased. The commitment is salted with 32 random bytes kept only inside the
# sealed value: once the user's key is destroyed it cannot be brute-forced.
_COMMITMENT_LABEL = b"ctxledger metadata commitment\n"
SALT_BYTES = 32
SEALED_DETAILS = ("metadata", "metadata_salt", "erased")
"""Keys of an event's details that the chain does not cover in format 2."""


def metadata_commitment(salt: str, metadata: Mapping[str, Any]) -> str:
    """The commitment (SHA-256, hex) to ``metadata`` under ``salt`` (hex)."""
    return salted_commitment(bytes.fromhex(salt), metadata)


def commitment_opens(commitment: object, salt: object, metadata: object) -> bool:
    """Whether shown ``metadata`` and its ``salt`` (hex) are what ``commitment``
    was made of; False for values of the wrong kind, never an error."""
    try:
        return (
            isinstance(salt, str)
            and len(salt) == 2 * SALT_BYTES
            and isinstance(metadata, dict)
            and metadata_commitment(salt, metadata) == commitment
        )
    except (ValueError, TypeError, RecursionError):
        return False


def salted_commitment(salt: bytes, metadata: Mapping[str, Any]) -> str:
    """``metadata_commitment`` with the salt as bytes (as it is sealed)."""
    return hashlib.sha256(
        _COMMITMENT_LABEL + salt + canonical_encoding(metadata)
    ).hexdigest()


def chain_form(record: Mapping[str, Any]) -> dict[str, Any]:
    """What the chain hashes of an event in its JSON form (``LedgerEvent``).

    Format 1 (no ``metadata_commitment`` in its details): the record as it is.
    Format 2: the record without the sealed values (metadata and its salt) and
    without the erasure mark; the commitment stands for them.
    """
    details = record["details"]
    kept = chain_details(details)
    return dict(record) if kept is details else {**record, "details": kept}


def chain_details(details: dict[str, Any]) -> dict[str, Any]:
    """The part of an event's details the chain covers (``chain_form``'s rule):
    ``details`` itself in format 1, else a copy without ``SEALED_DETAILS``."""
    if details.get("metadata_commitment") is None:
        return details
    kept = dict(details)
    for key in SEALED_DETAILS:
        kept.pop(key, None)
    return kept


def chain_hash(record: Mapping[str, Any]) -> str:
    """The hash the next event's ``prev_hash`` holds (``chain_form``'s)."""
    return record_hash(chain_form(record))
