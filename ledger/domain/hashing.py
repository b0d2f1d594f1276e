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
