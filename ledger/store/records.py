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

import functools
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

import msgpack
from eventsourcing.persistence import StoredEvent

from ledger.domain.events import (
    EVENT_CLASSES,
    ContextEvent,
)
from ledger.domain.models import EventKind, LedgerEvent
from ledger.errors import LedgerError
from ledger.store.keys import KeyStore, place_of, unseal
from ledger.store.serialization import (
    _EVENT,
    FORMAT_FIELD,
    SEALED,
    TOPICS,
    MsgpackTranscoder,
    PydanticMapper,
    _ext_hook,
)

_BUILT_IN = {cls.TOPIC: cls for cls in EVENT_CLASSES}
KIND_BY_TOPIC: dict[str, EventKind] = {cls.TOPIC: cls.KIND for cls in EVENT_CLASSES}
_ENVELOPE = ("user_id", "context_id", "thread_id", "prev_hash")
_IDS = ("command_id", "request_id")
_OWN_FIELDS: dict[EventKind, tuple[str, ...]] = {
    "created": ("ttl_seconds",),
    "reused": ("ttl_seconds", "reuse_count"),
    "updated": (),
    "expired": ("reason", "expires_at"),
    "cleared": ("reason",),
    "forgotten": ("reason",),
}
_CARRIES_METADATA = frozenset({"created", "reused", "updated"})
_COMMON = frozenset(
    {"timestamp", "user_id", "context_id", "thread_id", "run_id", "prev_hash"}
)
_SHAPES: dict[EventKind, tuple[frozenset[str], frozenset[str]]] = {
    kind: (
        _COMMON | set(own) | ({SEALED, "metadata_commitment"}),  # format 2
        _COMMON | set(own) | {"metadata"},  # format 1 (before sealing)
    )
    if kind in _CARRIES_METADATA
    else (_COMMON | set(own), _COMMON | set(own))
    for kind, own in _OWN_FIELDS.items()
}
_OPTIONAL = frozenset({"command_id", "request_id", "key_generation", FORMAT_FIELD})
MAX_GENERATION = 2**62
PLACES_KEPT = 50_000


unpack_state = functools.partial(msgpack.unpackb, ext_hook=_ext_hook, raw=False)
"""``MsgpackTranscoder.decode`` without its call (the read side's hot path)."""


def json_time(at: datetime) -> str:
    """A UTC time as pydantic writes it in JSON mode (``...Z``)."""
    text = (at if at.tzinfo is UTC else at.astimezone(UTC)).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


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
        return {
            "user_id": self.user_id,
            "kind": self.KIND,
            "context_id": self.context_id,
            "thread_id": self.thread_id,
            "run_id": self.run_id,
            "occurred_at": json_time(self.timestamp),
            "version": self.version,
            "prev_hash": self.prev_hash,
            "details": dict(self.details),
        }

    def to_ledger_event(self) -> LedgerEvent:
        """The auditor's view of it (validated: pydantic's validator, in Rust,
        takes less time than ``model_construct``)."""
        return LedgerEvent.model_validate(
            {
                "user_id": self.user_id,
                "kind": self.KIND,
                "context_id": self.context_id,
                "thread_id": self.thread_id,
                "run_id": self.run_id,
                "occurred_at": self.timestamp,
                "version": self.version,
                "details": self.details,
                "prev_hash": self.prev_hash,
            }
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
        )


class RecordReader:
    """Reads stored events into records: the fast decoder, else the mapper.

    Keys are looked up through ``keys.for_reading``: callers open a
    ``keys.reading()`` scope around a page, so each user's key is read once."""

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
        """The record of ``stored``; the mapper's errors for what it cannot read
        (MapperDeserialisationError for damage), and TypeError for a topic that
        is not an event of a context."""
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
            raise  # a master key that does not open the keys: a setting to fix
        except Exception:  # noqa: BLE001  (the mapper says what is wrong)
            record = None
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
            msg = f"topic {topic!r} is not an event of a context"
            raise TypeError(msg)
        return EventRecord.of_event(event)

    def _fast(
        self, stream: UUID | str, version: int, topic: str, stored: bytes
    ) -> EventRecord | None:
        cls = _BUILT_IN.get(topic)
        if cls is None or TOPICS.get(topic) is not cls:
            return None  # another class reads it (a newer version): the mapper
        try:
            state = self._decode(stored)
        except Exception:  # noqa: BLE001  (the mapper says what is wrong)
            return None
        if type(state) is not dict:
            return None
        kind = KIND_BY_TOPIC[topic]
        fits, sealed = _shape(kind, state)
        details = _ids(state) if fits and _envelope_holds(state) else None
        generation: int = state.get("key_generation", 0)
        salt = None
        if details is not None and kind in _CARRIES_METADATA:
            shown = self._metadata(stream, generation, state, sealed)
            if shown is None:
                return None
            details["metadata"], salt = shown
        if details is None or not _own_fields(kind, state, details):
            return None
        commitment = state.get("metadata_commitment") if sealed is not None else None
        if commitment is not None or kind == "forgotten":
            details["key_generation"] = generation
        if commitment is not None:
            details["metadata_commitment"] = commitment
            if details["metadata"] is None:
                details["erased"] = True
            else:
                details["metadata_salt"] = salt
        return EventRecord(
            KIND=kind,
            user_id=state["user_id"],
            context_id=state["context_id"],
            thread_id=state["thread_id"],
            run_id=state["run_id"],
            timestamp=state["timestamp"],
            version=version,
            prev_hash=state["prev_hash"],
            details=details,
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
            if type(metadata) is not dict or not _plain_json(metadata):
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
        try:
            plain = unseal(cipher, place, sealed)
            metadata, salt = self._decode(plain)
        except Exception:  # noqa: BLE001
            return None
        if (
            type(metadata) is not dict
            or type(salt) is not bytes
            or not all(type(key) is str for key in metadata)
        ):
            return None
        return metadata, salt.hex()


def as_uuid(stream: UUID | str) -> UUID:
    """A stream id as a UUID (recorders give UUIDs or their text)."""
    return stream if isinstance(stream, UUID) else UUID(stream)


def _shape(kind: EventKind, state: dict[str, Any]) -> tuple[bool, bytes | None]:
    """Whether the state has a shape of its kind, and its sealed value (format 2;
    None for format 1 or an event with no metadata)."""
    sealed_shape, plain_shape = _SHAPES[kind]
    keys = state.keys() - _OPTIONAL
    written = state.get(FORMAT_FIELD, 1)
    if type(written) is not int or written not in (1, 2):
        return False, None  # a newer format: the mapper says so
    if keys == sealed_shape and kind in _CARRIES_METADATA:
        sealed = state[SEALED]
        return type(sealed) is bytes, sealed
    return keys == plain_shape, None


def _envelope_holds(state: dict[str, Any]) -> bool:
    """Whether the fields every event has are of their models' types."""
    for name in _ENVELOPE:
        if type(state[name]) is not str:
            return False
    run_id = state["run_id"]
    generation = state.get("key_generation", 0)
    return (
        (run_id is None or type(run_id) is str)
        and type(state["timestamp"]) is datetime
        and type(generation) is int
        and 0 <= generation < MAX_GENERATION
    )


def _ids(state: dict[str, Any]) -> dict[str, Any] | None:
    """The details' call ids (stored only when set); None if one is not a string."""
    details: dict[str, Any] = {}
    for name in _IDS:
        if name in state:
            if type(state[name]) is not str:
                return None
            details[name] = state[name]
    return details


def _own_fields(
    kind: EventKind, state: dict[str, Any], details: dict[str, Any]
) -> bool:
    """Adds the fields of the event's kind to ``details`` in JSON form; False if
    one is not of its model's type."""
    for name in _OWN_FIELDS[kind]:
        value = state[name]
        if name == "ttl_seconds":
            if value is not None and (
                type(value) is not float or not math.isfinite(value)
            ):
                return False
        elif name == "expires_at":
            if type(value) is not datetime:
                return False
            value = json_time(value)
        elif type(value) is not (int if name == "reuse_count" else str):
            return False
        details[name] = value
    return True


def _plain_json(value: object, depth: int = 0) -> bool:
    """Whether a value read from msgpack is JSON as pydantic's JSON mode writes it
    unchanged (no bytes, times or extension values; finite floats; string keys)."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is float:
        return math.isfinite(cast(float, value))
    if depth > 100:  # noqa: PLR2004
        return False
    if kind is dict:
        return all(
            type(key) is str and _plain_json(item, depth + 1)
            for key, item in cast(dict[Any, Any], value).items()
        )
    if kind is list:
        return all(_plain_json(item, depth + 1) for item in cast(list[Any], value))
    return False
