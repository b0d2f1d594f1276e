"""The stored forms of events and snapshots, each rule written once.

- The registry of stored formats: which class reads each topic (``register``),
  which ``format`` values a release reads, and the class versions' upgrade steps
  (``upgrade``, the library's ``class_version`` upcasting).
- The msgpack encoding (``MsgpackTranscoder``) and ``DECODE_ERRORS``, what decoding
  stored bytes may raise. The decoders (the mapper, ``records.RecordReader``)
  catch that tuple, nothing wider, and raise ``MapperDeserialisationError``: the
  one error a reader outside the codec meets for a stored event it cannot read.
- The exact stored shape of each event class of this release (``SHAPES``), derived
  from the models' fields, which the fast decoder (``records.RecordReader``) reads
  without pydantic. Anything outside these shapes is the mapper's
  (``serialization.PydanticMapper``), so both decode alike or refuse alike.

The JSON form of an event (``LedgerEvent``) and the part the chain covers are
built by the domain (``events.shape_record``, ``hashing.chain_form``), which the
store must not be imported by.
"""

import functools
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from uuid import UUID

import msgpack
from eventsourcing.persistence import Transcoder
from pydantic import AwareDatetime, BaseModel

from ledger._domain.contexts import UserSnapshot
from ledger._domain.events import (
    EVENT_CLASS_BY_KIND,
    EVENT_CLASSES,
    CarriesMetadata,
    ContextEvent,
    written_record,
)
from ledger._domain.models import EventKind

FORMAT_FIELD = "format"
SEALED = "sealed"
CLASS_VERSION = "class_version"
FORMAT = 2
"""The stored format of events this release writes: 1, events before sealing (no
``format`` field); 2, personal data sealed and committed to (``sealed``,
``key_generation``, ``metadata_commitment``)."""
SNAPSHOT_FORMAT = 3
"""The stored format of snapshots this release writes: 2, the contexts' metadata
sealed (when there are contexts); 3, always sealed, the associated data binding
the digest of the rest of the snapshot's state (``snapshot_digest``), so the
sealed value opens only on the state as it was taken."""
MAX_GENERATION = 2**62
"""Key generations are below this (they are stored in 8 signed bytes)."""

DECODE_ERRORS: tuple[type[Exception], ...] = (
    ValueError,  # msgpack's, pydantic's ValidationError, MapperDeserialisationError
    TypeError,
    KeyError,
    IndexError,
    AttributeError,  # an upcast method missing
    OverflowError,  # a time out of range
    RecursionError,  # a value nested too deep to hash
    struct.error,  # an extension value of the wrong length
    msgpack.UnpackException,  # truncated input
)
"""What decoding a stored event or snapshot may raise for bytes it cannot read.
A ``LedgerError`` (a master key that does not open the keys) is a setting to fix,
never one user's damage, but ``LedgerConfigError`` is a ValueError: where a key
is looked up, let ``LedgerError`` pass before catching this tuple."""

TOPICS: dict[str, type[BaseModel]] = {cls.TOPIC: cls for cls in EVENT_CLASSES}
"""The class that reads each topic (``register`` puts a newer version in)."""
TOPICS[UserSnapshot.TOPIC] = UserSnapshot


def register(cls: type[ContextEvent]) -> type[ContextEvent]:
    """Makes ``cls`` the class that reads its topic: a new version of
    an event class, with ``class_version`` and ``upcast_vK_vK+1`` methods, takes
    over the stored events of the older one. Returns the class it replaced."""
    replaced = TOPICS[cls.TOPIC]
    if not issubclass(cls, ContextEvent) or not issubclass(
        cast(type, replaced), ContextEvent
    ):
        msg = f"{cls!r} is not a ContextEvent class of a known topic"
        raise TypeError(msg)
    TOPICS[cls.TOPIC] = cls
    EVENT_CLASS_BY_KIND[cls.KIND] = cls  # what auditors' records are read back as
    return cast(type[ContextEvent], replaced)


def check_format(written: object, newest: int = FORMAT) -> int:
    """The stored ``format`` if this release reads it (1 to ``newest``: FORMAT for
    events, SNAPSHOT_FORMAT for snapshots); ValueError for any other value."""
    if type(written) is not int or not 1 <= written <= newest:
        newer = type(written) is int and written > newest
        msg = (
            f"it was stored in format {written!r} by a newer release (this one "
            f"reads formats 1 to {newest}): upgrade ctxledger"
            if newer
            else f"its stored format {written!r} is not a format (1 to {newest})"
        )
        raise ValueError(msg)
    return written


def check_generation(generation: object) -> int:
    """A stored key generation; ValueError if it is not one."""
    if type(generation) is not int or not 0 <= generation < MAX_GENERATION:
        msg = f"its key generation {generation!r} is not a generation"
        raise ValueError(msg)
    return generation


def upgrade(cls: type[BaseModel], state: dict[str, Any]) -> dict[str, Any] | None:
    """Upgrades a stored state written by an older class version of ``cls`` in
    place (its ``upcast_vK_vK+1`` methods in turn, after taking ``class_version``
    out); returns the event's JSON form as written, which the chain covers, or
    None when it was written by the current version."""
    written = state.pop(CLASS_VERSION, 1)
    current: int = getattr(cls, "class_version", 1)
    if written == current:
        return None
    if type(written) is not int:
        msg = f"its class version {written!r} is not a version"
        raise TypeError(msg)
    form = None
    if written < current and issubclass(cls, ContextEvent):
        form = written_record(cls.KIND, dict(state))
    for version in range(written, current):
        getattr(cls, f"upcast_v{version}_v{version + 1}")(state)
    return form


_DATETIME = 1
_UUID = 2
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROS = struct.Struct(">q")
_MICROSECOND = timedelta(microseconds=1)
"""A time is stored as microseconds since the epoch; multiplying this by them is
exact (integer arithmetic) and a third of the cost of building a timedelta from
keywords, once per event read."""


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


def ext_hook(code: int, data: bytes) -> object:
    """msgpack's extension values: times (as UTC) and UUIDs."""
    if code == _DATETIME:
        return _EPOCH + _MICROSECOND * _MICROS.unpack(data)[0]
    if code == _UUID:
        return UUID(bytes=data)
    return msgpack.ExtType(code, data)


class MsgpackTranscoder(Transcoder):
    """msgpack with extension types for timezone-aware datetimes (as UTC) and UUIDs."""

    def encode(self, obj: Any) -> bytes:
        return cast(bytes, msgpack.packb(obj, default=_default, use_bin_type=True))

    def decode(self, data: bytes) -> Any:
        return msgpack.unpackb(data, ext_hook=ext_hook, raw=False)


unpack_state = functools.partial(msgpack.unpackb, ext_hook=ext_hook, raw=False)
"""``MsgpackTranscoder.decode`` without its call (the read side's hot path)."""


def json_time(at: datetime) -> str:
    """A UTC time as pydantic writes it in JSON mode (``...Z``)."""
    text = (at if at.tzinfo is UTC else at.astimezone(UTC)).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


# The exact stored shapes, from the models' fields. Each field's annotation names
# the exact types of the values its model's JSON form shows unchanged: a bool is
# not an int, a float must be finite, a datetime is shown as text.
Types = frozenset[type]
_NONE: type = type(None)
_TYPES: dict[object, Types] = {
    str: frozenset({str}),
    str | None: frozenset({str, _NONE}),
    int: frozenset({int}),
    float | None: frozenset({float, _NONE}),
    AwareDatetime: frozenset({datetime}),
}
_METADATA = frozenset(CarriesMetadata.model_fields) - frozenset(
    ContextEvent.model_fields
)
"""The fields of personal data: stored sealed in format 2, as is in format 1."""
_STREAM = frozenset({"originator_id", "originator_version"})
"""Fields the stored row holds, not its state."""
CALL_IDS = tuple(
    name
    for name, field in ContextEvent.model_fields.items()
    if name.endswith("_id") and not field.is_required()
)
"""Fields stored only when set (``ContextEvent.unset_ids``)."""


@dataclass(frozen=True, slots=True)
class Shape:
    """The exact stored state of one event class of this release."""

    cls: type[ContextEvent]
    kind: EventKind
    common: tuple[tuple[str, Types], ...]
    """Fields every event stores, with the types they may have."""
    own: tuple[tuple[str, Types], ...]
    """The fields of its kind (shown in its details), in the model's order."""
    keys: frozenset[str]
    """The state's required keys without personal data."""
    sealed_keys: frozenset[str]
    """Format 2: ``keys``, the sealed value and the commitment."""
    plain_keys: frozenset[str]
    """Format 1 (before sealing): ``keys`` and the metadata as is."""
    optional: frozenset[str]
    """Keys a state may hold or not: the call ids, the key generation, format."""
    carries_metadata: bool


def _typed(names: Iterable[str], cls: type[BaseModel]) -> tuple[tuple[str, Types], ...]:
    """Each field with its types; KeyError for a type the fast path does not know."""
    return tuple((name, _TYPES[cls.model_fields[name].annotation]) for name in names)


def shape_of(cls: type[ContextEvent]) -> Shape | None:
    """The shape of ``cls``'s stored state; None if a field's type has no check
    (its events are then read by the mapper only)."""
    base = ContextEvent.model_fields
    common = [n for n, f in base.items() if f.is_required() and n not in _STREAM]
    own = [n for n in cls.model_fields if n not in base and n not in _METADATA]
    try:
        typed = _typed(common, ContextEvent), _typed(own, cls)
    except KeyError:
        return None
    keys = frozenset(common) | frozenset(own)
    metadata = issubclass(cls, CarriesMetadata)
    return Shape(
        cls=cls,
        kind=cls.KIND,
        common=typed[0],
        own=typed[1],
        keys=keys,
        sealed_keys=keys | {SEALED, "metadata_commitment"} if metadata else keys,
        plain_keys=keys | {"metadata"} if metadata else keys,
        optional=frozenset(
            {n for n, f in base.items() if not f.is_required()} | {FORMAT_FIELD}
        ),
        carries_metadata=metadata,
    )


SHAPES: dict[str, Shape] = {
    cls.TOPIC: shape for cls in EVENT_CLASSES if (shape := shape_of(cls)) is not None
}
"""The built-in event classes' shapes by topic (used while the class is the one
``TOPICS`` names: a registered newer version is read by the mapper)."""


def sealed_value(shape: Shape, state: dict[str, Any]) -> tuple[bool, bytes | None]:
    """Whether ``state`` has exactly a shape of this release for ``shape`` (its
    keys, its format), and its sealed value (format 2; None for format 1 or an
    event without personal data)."""
    written = state.get(FORMAT_FIELD, 1)
    if type(written) is not int or not 1 <= written <= FORMAT:
        return False, None  # the mapper says why
    keys = state.keys() - shape.optional
    if shape.carries_metadata and keys == shape.sealed_keys:
        sealed = state[SEALED]
        return type(sealed) is bytes, sealed
    return keys == shape.plain_keys, None


def envelope_details(shape: Shape, state: dict[str, Any]) -> dict[str, Any] | None:
    """The details an event's envelope gives (its call ids, stored only when
    set), once its common fields and key generation are checked to be of their
    models' types as this release stores them; None if one is not."""
    for name, types in shape.common:
        value = state[name]
        kind = type(value)
        if kind not in types or (kind is float and not math.isfinite(value)):
            return None
    generation = state.get("key_generation", 0)
    if type(generation) is not int or not 0 <= generation < MAX_GENERATION:
        return None
    details: dict[str, Any] = {}
    for name in CALL_IDS:
        if name in state:
            value = state[name]
            if type(value) is not str:
                return None
            details[name] = value
    return details


def json_fields(
    fields: tuple[tuple[str, Types], ...], state: dict[str, Any], into: dict[str, Any]
) -> bool:
    """Puts ``fields`` of ``state`` into ``into`` in JSON form; False as soon as
    one is not of its model's type as this release stores it."""
    for name, types in fields:
        value = state[name]
        kind = type(value)
        if kind not in types or (kind is float and not math.isfinite(value)):
            return False
        # isinstance, not ``kind is datetime``: under freezegun this module's
        # ``datetime`` is its fake class, while stored values decode as real ones.
        into[name] = json_time(value) if isinstance(value, datetime) else value
    return True


def plain_json(value: object, depth: int = 0) -> bool:
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
            type(key) is str and plain_json(item, depth + 1)
            for key, item in cast(dict[Any, Any], value).items()
        )
    if kind is list:
        return all(plain_json(item, depth + 1) for item in cast(list[Any], value))
    return False
