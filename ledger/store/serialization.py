"""How events are stored: pydantic models, encoded with msgpack.

``MsgpackTranscoder`` and ``PydanticMapper`` plug into ``eventsourcing`` through its
``TRANSCODER_TOPIC`` and ``MAPPER_TOPIC`` settings.
"""

import struct
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from uuid import UUID

import msgpack
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import (
    Mapper,
    MapperDeserialisationError,
    StoredEvent,
    Transcoder,
)
from pydantic import BaseModel, ValidationError

from ledger.domain.contexts import UserSnapshot
from ledger.domain.events import EVENT_CLASSES, ContextEvent

_DATETIME = 1
_UUID = 2
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROS = struct.Struct(">q")

TOPICS: dict[str, type[BaseModel]] = {cls.TOPIC: cls for cls in EVENT_CLASSES}
TOPICS[UserSnapshot.TOPIC] = UserSnapshot


def _default(obj: object) -> msgpack.ExtType:
    # isinstance, not an exact type check, so freezegun's FakeDatetime encodes too.
    if isinstance(obj, datetime):
        if obj.tzinfo is None:
            msg = f"naive datetime {obj!r} cannot be stored; give it a timezone"
            raise TypeError(msg)
        micros = (obj - _EPOCH) // timedelta(microseconds=1)
        return msgpack.ExtType(_DATETIME, _MICROS.pack(micros))
    if isinstance(obj, UUID):
        return msgpack.ExtType(_UUID, obj.bytes)
    msg = f"cannot encode {type(obj).__name__} with msgpack: {obj!r}"
    raise TypeError(msg)


def _ext_hook(code: int, data: bytes) -> object:
    if code == _DATETIME:
        return _EPOCH + timedelta(microseconds=_MICROS.unpack(data)[0])
    if code == _UUID:
        return UUID(bytes=data)
    return msgpack.ExtType(code, data)


class MsgpackTranscoder(Transcoder):
    """msgpack with extension types for timezone-aware datetimes (as UTC) and UUIDs."""

    def encode(self, obj: Any) -> bytes:
        return cast(bytes, msgpack.packb(obj, default=_default, use_bin_type=True))

    def decode(self, data: bytes) -> Any:
        return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False)


class PydanticMapper(Mapper[UUID]):
    """Maps pydantic events to stored events by their explicit topics."""

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        model = cast(BaseModel, domain_event)
        topic: str = getattr(type(model), "TOPIC")  # noqa: B009  (ClassVar on each model)
        unset = (
            model.unset_ids() if isinstance(model, ContextEvent) else {"originator_id"}
        )
        state = model.model_dump(exclude=unset | {"originator_version"})
        stored = self.transcoder.encode(state)
        if self.compressor:
            stored = self.compressor.compress(stored)
        if self.cipher:
            stored = self.cipher.encrypt(stored)
        return StoredEvent(
            originator_id=domain_event.originator_id,
            originator_version=domain_event.originator_version,
            topic=topic,
            state=stored,
        )

    def to_domain_event(self, stored_event: StoredEvent) -> DomainEventProtocol[UUID]:
        try:
            cls = TOPICS[stored_event.topic]
            data = stored_event.state
            if self.cipher:
                data = self.cipher.decrypt(data)
            if self.compressor:
                data = self.compressor.decompress(data)
            state = self.transcoder.decode(data)
            state["originator_id"] = _as_uuid(stored_event.originator_id)
            state["originator_version"] = stored_event.originator_version
            event = cls.model_validate(state)
        except (
            KeyError,
            TypeError,
            ValueError,
            ValidationError,
            OverflowError,  # a time out of range
            struct.error,  # an extension value of the wrong length
        ) as error:
            msg = (
                f"stored event {stored_event.topic!r} of stream "
                f"{stored_event.originator_id} version "
                f"{stored_event.originator_version} cannot be decoded: {error}"
            )
            raise MapperDeserialisationError(msg) from error
        return cast(DomainEventProtocol[UUID], event)


def _as_uuid(value: UUID | str) -> UUID:
    return value if isinstance(value, UUID) else UUID(value)
