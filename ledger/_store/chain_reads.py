"""How verification reads a stored event: with the readers' own decoder.

``verify_chain`` hashes each event as ``records.RecordReader`` reads it, so
whatever a read of the user refuses (and tells the operator to verify) is a
finding of verification for that user and version, and whatever verification
passes, the reads accept.
"""

from datetime import datetime
from typing import NamedTuple, Protocol
from uuid import UUID

from eventsourcing.persistence import MapperDeserialisationError

from ledger._domain.contexts import user_aggregate_id
from ledger._domain.hashing import metadata_commitment, record_hash
from ledger._store.backends import as_stream_id
from ledger._store.codec import DECODE_ERRORS, unpack_state
from ledger._store.records import EventRecord, RecordReader


class Stored(Protocol):
    """What the chain reads of a stored event (a ``StoredEvent`` or a log row)."""

    @property
    def originator_id(self) -> UUID | str: ...
    @property
    def originator_version(self) -> int: ...
    @property
    def topic(self) -> str: ...
    @property
    def state(self) -> bytes: ...


class Read(NamedTuple):
    """What the chain needs of one stored event (a tuple: one is made per event)."""

    user_id: str
    prev_hash: str
    hash: str
    timestamp: datetime
    record: EventRecord
    """The event as the readers read it: verification folds it to prove the
    user's snapshots."""


def quick_read(stored: Stored, records: RecordReader) -> Read | None:
    """The event read as the readers read it and hashed; None if it cannot be
    read or its metadata is not what its commitment was made of (``exact_read``
    says why). It does not check that the event's user owns its stream."""
    read = _chain_read(stored, records)
    return read if isinstance(read, Read) else None


def exact_read(stored: Stored, records: RecordReader) -> Read | str:
    """The event read as the readers read it and hashed, its user checked to own
    its stream; a description of the finding if not."""
    read = _chain_read(stored, records)
    if isinstance(read, str):
        return read
    if user_aggregate_id(read.user_id) != as_stream_id(stored.originator_id):
        return f"it names user {read.user_id!r}, who owns another stream"
    return read


def named_user(stored: Stored) -> str | None:
    """The user a stored event that cannot be read names, if it names one whose
    stream it is in: verification reports the event under that name."""
    try:
        user_id = unpack_state(stored.state)["user_id"]
        owner = type(user_id) is str and user_aggregate_id(user_id)
    except DECODE_ERRORS:
        return None
    return user_id if owner == as_stream_id(stored.originator_id) else None


def _chain_read(stored: Stored, records: RecordReader) -> Read | str:
    try:
        record = records.read_row(
            stored.originator_id, stored.originator_version, stored.topic, stored.state
        )
    except MapperDeserialisationError as error:
        return f"it cannot be decoded: {' '.join(str(error).split())[:300]}"
    if not _commitment_holds(record):
        return "its metadata is not what its metadata_commitment was made of"
    try:
        hashed = record_hash(record.chain_record())
    except DECODE_ERRORS as error:  # a value JSON has no form for (NaN)
        return f"it cannot be hashed: {' '.join(str(error).split())[:300]}"
    return Read(record.user_id, record.prev_hash, hashed, record.timestamp, record)


def _commitment_holds(record: EventRecord) -> bool:
    """Whether the event's shown metadata is what its commitment was made of (the
    chain covers the commitment, so this ties the metadata to the chain)."""
    details = record.details
    commitment = details.get("metadata_commitment")
    if commitment is None:
        return True
    metadata, salt = details.get("metadata"), details.get("metadata_salt")
    if metadata is None:
        return salt is None  # erased: nothing to open
    try:
        return isinstance(salt, str) and (
            metadata_commitment(salt, metadata) == commitment
        )
    except DECODE_ERRORS:
        return False
