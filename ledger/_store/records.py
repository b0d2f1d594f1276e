"""The one decoder of stored events for the read side, and verification's reads.

Rebuilding views, reading a history, the change feed and verification read every
event. The domain's way (``PydanticMapper.to_domain_event``, a validated model per
event, then ``ledger_record``) costs several times the storage's own work, so
``RecordReader`` reads a state of exactly a shape of this release (``codec.SHAPES``,
derived from the models' fields) straight into an ``EventRecord``: the event's
JSON form (``LedgerEvent``) and the facts ``evolve_context`` reads, with the
sealed value kept as stored. Anything else (an older class version to upcast, a
field of another type, plain metadata beside sealed metadata, a format it does
not know) goes to the mapper, which decodes it as loading does or refuses it as
loading does. So the fast path can only save time: ``tests/unit/test_codec_reader``
and ``tests/integration/test_fast_read_paths`` check that both give the same
record, or both refuse, on altered and random events.

``chain_reads`` is how ``verify_chain`` reads an event: through this reader.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast
from uuid import UUID

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.persistence import MapperDeserialisationError, StoredEvent

from ledger._domain.events import ContextEvent, ledger_form, shape_details
from ledger._domain.hashing import chain_details, chain_form
from ledger._domain.models import EventKind, LedgerEvent
from ledger._store.codec import (
    DECODE_ERRORS,
    SHAPES,
    TOPICS,
    MsgpackTranscoder,
    envelope_details,
    json_fields,
    json_time,
    plain_json,
    sealed_value,
    unpack_state,
)
from ledger._store.keys import KeyStore, place_of, unseal
from ledger._store.serialization import _EVENT, PydanticMapper
from ledger.errors import LedgerError

__all__ = [
    "EventRecord",
    "RecordReader",
    "as_uuid",
    "unpack_state",  # the codec's, imported from here by the log source
]

PLACES_KEPT = 50_000
_STR = frozenset({str})


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
        """What the hash chain covers of it (``ContextEvent.chain_record``), to
        hash: without a commitment, its details are the record's own, not a copy."""
        if self.written is not None:
            return chain_form(self.written)
        return self._form(json_time(self.timestamp), chain_details(self.details))

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
        self._ciphers: dict[tuple[UUID | str, int], AESGCM | None] | None = None
        """The keys a ``keys.reading()`` scope gave (``in_scope``); None: ask the
        key store each time."""

    def in_scope(self) -> "RecordReader":
        """A reader for one ``keys.reading()`` scope (a verification pass), used
        only inside it: it keeps each key (or its absence) the scope gave, which
        the scope would give again unchanged, so a key is asked for once a stream
        and generation rather than once an event. Failures are not kept."""
        reader = RecordReader(self.mapper, self.keys)
        reader._ciphers = {}
        return reader

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
        if shape is None or TOPICS[topic] is not shape.cls:
            return None  # another class reads it (a newer version): the mapper
        state = self._decode(stored)
        if type(state) is not dict:
            return None
        fits, sealed = sealed_value(shape, state)
        details = envelope_details(shape, state) if fits else None
        if details is None:
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
        commitment = state["metadata_commitment"] if sealed is not None else None
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
        at = stream, generation
        known = self._places.get(at)
        if known is None:
            if len(self._places) >= PLACES_KEPT:
                self._places.clear()
            stream_id = as_uuid(stream)
            known = stream_id, place_of(_EVENT, stream_id, 0, generation)
            self._places[at] = known
        stream_id, place = known
        ciphers = self._ciphers
        if ciphers is None:
            cipher = self.keys.for_reading(stream_id, generation)
        elif at in ciphers:
            cipher = ciphers[at]
        else:
            cipher = ciphers[at] = self.keys.for_reading(stream_id, generation)
        if cipher is None:
            return None, None
        metadata, salt = self._decode(unseal(cipher, place, sealed))
        if (
            type(metadata) is not dict
            or type(salt) is not bytes
            or not _STR.issuperset(map(type, metadata))
        ):
            return None
        return metadata, salt.hex()


def as_uuid(stream: UUID | str) -> UUID:
    """A stream id as a UUID (recorders give UUIDs or their text)."""
    return stream if isinstance(stream, UUID) else UUID(stream)
