"""The one rule for trusting a snapshot, used by every read that starts from one:
loading a user's state (``LedgerApplication.load`` and ``state_at``),
``contexts_as_of`` and ``history`` (``ledger._audit.history``).

A snapshot only saves a replay; it is never evidence. A read starts from one only
if it is of format 3 and its sealed value opens, so that every field is as the
ledger took it (with a master key, nobody without it can seal one that opens).
Any other is passed over and the events are replayed: a snapshot of format 2 is
not authenticated, and one whose key is destroyed cannot be, so either could
carry edited state into the state the ledger acts on and into the snapshots it
writes later. ``verify_chain`` proves every snapshot against the events
(``ledger._audit.snapshot_proof``).
"""

import logging
from typing import Any
from uuid import UUID

from ledger._domain.snapshot import UserSnapshot
from ledger._store.codec import DECODE_ERRORS
from ledger._store.serialization import PydanticMapper
from ledger.errors import LedgerError

_log = logging.getLogger(__name__)


def trusted_snapshot(
    snapshots: Any, mapper: PydanticMapper, aggregate_id: UUID, lte: int | None = None
) -> UserSnapshot | None:
    """The newest snapshot of the stream (at or before version ``lte``) that a
    read may start from, or None; an altered one is logged and passed over.
    ``snapshots``: the application's snapshot store (None: snapshots are off)."""
    if snapshots is None:
        return None
    found = snapshots.recorder.select_events(aggregate_id, lte=lte, desc=True, limit=1)
    if not found:
        return None
    try:
        if not mapper.vouched_snapshot(found[0]):
            return None  # format 2, or its key destroyed: not authenticated
        snapshot = mapper.to_domain_event(found[0])
    except LedgerError:
        raise  # a master key that does not open the keys: a setting to fix
    except DECODE_ERRORS as error:  # any damage: replay instead
        _log.warning(
            "snapshot of %s at version %d not used (the events are replayed): %s",
            aggregate_id,
            found[0].originator_version,
            error,
        )
        return None
    return snapshot if isinstance(snapshot, UserSnapshot) else None
