"""Stored events read straight into what the read side needs, without pydantic.

Rebuilding views, reading a history and replaying a user read every event. The
domain's way (``PydanticMapper.to_domain_event``, a validated model per event, then
``ledger_record``) costs several times the storage's own work, so these paths read
the msgpack state into an ``EventRecord``: the event's JSON form (``LedgerEvent``)
and the facts ``evolve_context`` reads, with the sealed value kept as stored.

The fast decoder takes only states of the exact shape this release writes (or the
previous release wrote): the fields of the topic, each of the type its model
declares. Anything else (an older class version to upcast, a field of another
type, plain metadata beside sealed metadata, a newer format) goes to the mapper,
which decodes it as the domain does or raises as the domain does. So the fast path
can only save time; ``tests/test_fast_read.py`` checks on random events that both
give the same record.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple, Protocol, cast
from uuid import UUID

from eventsourcing.persistence import MapperDeserialisationError, StoredEvent

from ledger.domain.contexts import user_aggregate_id
from ledger.domain.events import (
    EVENT_CLASSES,
    ContextEvent,
    ledger_form,
    shape_details,
)
from ledger.domain.hashing import chain_form, metadata_commitment, record_hash
from ledger.domain.models import EventKind, LedgerEvent
from ledger.errors import LedgerError
from ledger.store.backends import as_stream_id
from ledger.store.codec import (
    DECODE_ERRORS,
    SHAPES,
    TOPICS,
    MsgpackTranscoder,
    Shape,
    fields_hold,
    generation_holds,
    json_fields,
    json_time,
    plain_json,
    sealed_value,
    stored_ids,
    unpack_state,
)
from ledger.store.keys import KeyStore, place_of, unseal
from ledger.store.serialization import _EVENT, PydanticMapper

__all__ = [
    "KIND_BY_TOPIC",
    "EventRecord",
    "Read",
    "RecordReader",
    "Stored",
    "as_uuid",
    "exact_read",
    "named_user",
    "quick_read",
    "unpack_state",  # the codec's, imported from here by the log source
]

KIND_BY_TOPIC: dict[str, EventKind] = {cls.TOPIC: cls.KIND for cls in EVENT_CLASSES}
PLACES_KEPT = 50_000


@dataclass(slots=True, kw_only=True)
class EventRecord:
    """One stored event as the read side uses it.

    ``details`` is the ``details`` of its JSON form (``LedgerEvent``), metadata
    opened (None and ``erased`` once its key is destroyed). The attributes named as
    the domain event's (``KIND``, ``timestamp``, ``metadata``, ``ttl_seconds``,
    ``reuse_count``, ``reason``) let ``evolve_context`` and the views take either.
    """

    KIND: EventKind
    user_id: str
    context_id: str
    thread_id: str
    run_id: str | None
    timestamp: datetime
    version: int
    prev_hash: str
    details: dict[str, Any]
    sealed: bytes | None = None
    """The event's sealed value as stored (format 2), for a view that keeps it
    sealed as it is; None for events read by the mapper or with none."""
    key_generation: int = 0
    plain_json: bool = False
    """Whether the fast decoder read it: then every value of ``details`` but the
    metadata is plain JSON (strings, finite floats, integers, lists, string-keyed
    maps), and so is metadata stored in plain form (format 1), which it checks.
    Sealed metadata is not walked: the ledger sealed it from validated input and
    the seal authenticates it."""
    written: dict[str, Any] | None = None
    """Its JSON form as written, when an older class version wrote it (the chain
    covers that); None when it is ``ledger_record()``."""

    @property
    def metadata(self) -> dict[str, Any] | None:
        return cast(dict[str, Any] | None, self.details.get("metadata"))

    @property
    def ttl_seconds(self) -> float | None:
        return cast(float | None, self.details.get("ttl_seconds"))

    @property
    def reuse_count(self) -> int:
        return cast(int, self.details.get("reuse_count", 0))

    @property
    def reason(self) -> str | None:
        """Why it ended its context (or the user's); None for other kinds."""
        return cast(str | None, self.details.get("reason"))

    @property
    def sealed_metadata(self) -> bool:
        """Whether its personal data is sealed in the store (format 2)."""
        return self.details.get("metadata_commitment") is not None

    def ledger_record(self) -> dict[str, Any]:
        """Its JSON form, as ``ContextEvent.ledger_record`` gives it."""
        return self._form(json_time(self.timestamp), dict(self.details))

    def chain_record(self) -> dict[str, Any]:
        """What the hash chain covers of it (``ContextEvent.chain_record``)."""
        return chain_form(
            self.ledger_record() if self.written is None else self.written
        )

    def to_ledger_event(self) -> LedgerEvent:
        """The auditor's view of it (validated: pydantic's validator, in Rust,
        takes less time than ``model_construct``)."""
        return LedgerEvent.model_validate(self._form(self.timestamp, self.details))

    def _form(self, occurred_at: object, details: dict[str, Any]) -> dict[str, Any]:
        envelope = (self.user_id, self.context_id, self.thread_id, self.run_id)
        return ledger_form(
            self.KIND, (*envelope, occurred_at), self.version, self.prev_hash, details
        )

    @classmethod
    def of_event(cls, event: ContextEvent) -> "EventRecord":
        """The record of an event the mapper decoded."""
        record = event.ledger_record()
        return cls(
            KIND=event.KIND,
            user_id=event.user_id,
            context_id=event.context_id,
            thread_id=event.thread_id,
            run_id=event.run_id,
            timestamp=event.timestamp,
            version=event.originator_version,
            prev_hash=event.prev_hash,
            details=record["details"],
            key_generation=event.key_generation,
            written=event._written,  # set by the mapper when it upcast the event
        )


class RecordReader:
    """Reads stored events into records: the fast decoder, else the mapper.

    The one decoder of stored events for every reader that does not load an
    aggregate (history, views, the feed, verification). Keys are looked up
    through ``keys.for_reading``: callers open a ``keys.reading()`` scope around
    a page, so each user's key is read once."""

    def __init__(self, mapper: PydanticMapper, keys: KeyStore) -> None:
        self.mapper = mapper
        self.keys = keys
        self._plain = mapper.cipher is None and mapper.compressor is None
        self._decode = (
            unpack_state
            if isinstance(mapper.transcoder, MsgpackTranscoder)
            else mapper.transcoder.decode
        )
        self._places: dict[tuple[UUID | str, int], tuple[UUID, bytes]] = {}
        """Each stream's id and associated data, worked out once (a UUID's bytes
        are computed anew on every access)."""

    def read(self, stored: StoredEvent) -> EventRecord:
        """The record of ``stored``: MapperDeserialisationError for a stored event
        it cannot read, whatever is wrong with it; a LedgerError for a setting
        (a master key that does not open the keys)."""
        return self.read_row(
            stored.originator_id, stored.originator_version, stored.topic, stored.state
        )

    def read_row(
        self, stream: UUID | str, version: int, topic: str, state: bytes
    ) -> EventRecord:
        """``read`` of a stored event given as its row's values."""
        try:
            record = self._fast(stream, version, topic, state) if self._plain else None
        except LedgerError:
            raise  # LedgerConfigError is a ValueError: a setting, not damage
        except DECODE_ERRORS:
            record = None  # the mapper says what is wrong
        if record is not None:
            return record
        event = self.mapper.to_domain_event(
            StoredEvent(
                originator_id=stream,
                originator_version=version,
                topic=topic,
                state=bytes(state),
            )
        )
        if not isinstance(event, ContextEvent):
            msg = (
                f"stored event {topic!r} of stream {stream} version {version} "
                "is not an event of a context"
            )
            raise MapperDeserialisationError(msg)
        return EventRecord.of_event(event)

    def _fast(
        self, stream: UUID | str, version: int, topic: str, stored: bytes
    ) -> EventRecord | None:
        """The record of a state of exactly a shape of this release (``codec``);
        None for any other (the mapper decides)."""
        shape = SHAPES.get(topic)
        if shape is None or TOPICS[topic] is not _BUILT_IN[topic]:
            return None  # another class reads it (a newer version): the mapper
        state = self._decode(stored)
        if type(state) is not dict:
            return None
        fits, sealed = sealed_value(shape, state)
        details: dict[str, Any] = {}
        if not (
            fits
            and fields_hold(shape.common, state)
            and generation_holds(state)
            and stored_ids(state, details)
        ):
            return None
        generation: int = state.get("key_generation", 0)
        salt = None
        if shape.carries_metadata:
            shown = self._metadata(stream, generation, state, sealed)
            if shown is None:
                return None
            details["metadata"], salt = shown
        if not json_fields(shape.own, state, details):
            return None
        return _record(
            shape,
            state,
            version=version,
            details=details,
            sealed=sealed,
            salt=salt,
            generation=generation,
        )

    def _metadata(
        self,
        stream: UUID | str,
        generation: int,
        state: dict[str, Any],
        sealed: bytes | None,
    ) -> tuple[dict[str, Any] | None, str | None] | None:
        """(metadata, salt hex) of the event: opened from its sealed value (None,
        None once the key is destroyed) or as stored (format 1); None when it is
        not what this release writes (the mapper decides)."""
        if sealed is None:
            metadata = state["metadata"]
            if type(metadata) is not dict or not plain_json(metadata):
                return None
            return metadata, None
        if type(state["metadata_commitment"]) is not str:
            return None
        return self._open(stream, generation, sealed)

    def _open(
        self, stream: UUID | str, generation: int, sealed: bytes
    ) -> tuple[dict[str, Any] | None, str | None] | None:
        """(metadata, salt hex) of a sealed value; (None, None) once its key is
        destroyed; None when it is not what this release seals (the mapper
        decides: it raises for a value that does not open)."""
        known = self._places.get((stream, generation))
        if known is None:
            if len(self._places) >= PLACES_KEPT:
                self._places.clear()
            stream_id = as_uuid(stream)
            known = stream_id, place_of(_EVENT, stream_id, 0, generation)
            self._places[stream, generation] = known
        stream_id, place = known
        cipher = self.keys.for_reading(stream_id, generation)
        if cipher is None:
            return None, None
        metadata, salt = self._decode(unseal(cipher, place, sealed))
        if (
            type(metadata) is not dict
            or type(salt) is not bytes
            or not all(type(key) is str for key in metadata)
        ):
            return None
        return metadata, salt.hex()


_BUILT_IN = {cls.TOPIC: cls for cls in EVENT_CLASSES}


def _record(
    shape: Shape,
    state: dict[str, Any],
    *,
    version: int,
    details: dict[str, Any],
    sealed: bytes | None,
    salt: str | None,
    generation: int,
) -> EventRecord:
    """The record of a state the fast decoder took (``details`` holds its call
    ids, metadata and own fields)."""
    commitment = state.get("metadata_commitment") if sealed is not None else None
    return EventRecord(
        KIND=shape.kind,
        user_id=state["user_id"],
        context_id=state["context_id"],
        thread_id=state["thread_id"],
        run_id=state["run_id"],
        timestamp=state["timestamp"],
        version=version,
        prev_hash=state["prev_hash"],
        details=shape_details(shape.kind, details, commitment, salt, generation),
        sealed=sealed,
        key_generation=generation,
        plain_json=True,
    )


def as_uuid(stream: UUID | str) -> UUID:
    """A stream id as a UUID (recorders give UUIDs or their text)."""
    return stream if isinstance(stream, UUID) else UUID(stream)


# Verification reads each event with the readers' decoder: whatever a read
# refuses is a finding, and whatever verification passes, reads accept.


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
    return Read(record.user_id, record.prev_hash, hashed, record.timestamp)


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
