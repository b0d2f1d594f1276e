"""The mapper: the only encoder of events and snapshots, and the domain's decoder.

``PydanticMapper`` (with the codec's ``MsgpackTranscoder``) plugs into
``eventsourcing`` through its ``MAPPER_TOPIC`` and ``TRANSCODER_TOPIC`` settings.
It seals personal data on the way in and opens it on the way out; what a stored
form is (formats, class versions, decode errors) is the codec's
(``ledger._store.codec``), whose names stay importable from here.
"""

import hashlib
from typing import Any, cast
from uuid import UUID

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.domain import DomainEventProtocol
from eventsourcing.persistence import (
    Mapper,
    MapperDeserialisationError,
    StoredEvent,
    Transcoder,
)
from pydantic import BaseModel

from ledger._domain.contexts import UserSnapshot
from ledger._domain.events import CarriesMetadata, ContextEvent
from ledger._store.codec import (
    DECODE_ERRORS,
    FORMAT,
    FORMAT_FIELD,
    SEALED,
    SNAPSHOT_FORMAT,
    TOPICS,
    MsgpackTranscoder,
    check_format,
    check_generation,
    register,
    upgrade,
)
from ledger._store.keys import KeyStore, place_of, seal, unseal
from ledger.errors import LedgerError

__all__ = [
    "FORMAT",
    "FORMAT_FIELD",
    "SEALED",
    "SNAPSHOT_FORMAT",
    "TOPICS",
    "MsgpackTranscoder",
    "Opener",
    "PydanticMapper",
    "register",
]
"""The codec's names that callers have imported from here stay importable."""

_EVENT = b"ctxledger event"
_SNAPSHOT = b"ctxledger snapshot"
_SNAPSHOT_DIGEST = b"ctxledger snapshot digest\n"
Opener = tuple[AESGCM | None, bytes]
"""The key (None once destroyed) and associated data that open a stream's
sealed event values of one key generation."""


class PydanticMapper(Mapper[UUID]):
    """Maps pydantic events to stored events by their explicit topics.

    - Personal data is sealed (``keys``): the metadata of an event of format 2
      and its salt, and the contexts' metadata in a snapshot. A value whose key
      was destroyed decodes as erased (metadata None).
    - Class versions: a class with ``class_version = N`` stores it in the state
      (from 2 on, as the library does), and an event stored by an older version
      is upgraded by the class's ``upcast_vK_vK+1(state)`` methods in turn. The
      event keeps its JSON form as written, which the chain covers.
    """

    def __init__(self, transcoder: Transcoder, *, keys: KeyStore | None = None) -> None:
        super().__init__(transcoder)
        self.keys = keys
        """The users' data keys (``LedgerApplication.construct_mapper`` gives
        them): without them, nothing sealed can be stored or read."""

    def to_stored_event(self, domain_event: DomainEventProtocol[UUID]) -> StoredEvent:
        model = cast(BaseModel, domain_event)
        cls = type(model)
        topic: str = getattr(cls, "TOPIC")  # noqa: B009  (ClassVar on each model)
        unset = (
            model.unset_ids() if isinstance(model, ContextEvent) else {"originator_id"}
        )
        state = model.model_dump(exclude=unset | {"originator_version"})
        class_version: int = getattr(cls, "class_version", 1)
        if class_version > 1:  # before sealing: a snapshot's digest covers it
            state["class_version"] = class_version
        if isinstance(model, CarriesMetadata):
            if model.metadata_commitment is not None:
                self._seal_event(model, state)
            else:  # as events were written before sealing (format 1)
                del state["metadata_commitment"], state["metadata_salt"]
        elif isinstance(model, UserSnapshot):
            self._seal_snapshot(model, state)
        state.setdefault(FORMAT_FIELD, FORMAT)  # a snapshot's is set as it is sealed
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

    def to_domain_event(
        self, stored_event: StoredEvent, *, opened: bool = True
    ) -> DomainEventProtocol[UUID]:
        """The stored event decoded; with ``opened=False`` its sealed metadata is
        left shut (``{}``, no key is looked up), for readers that need none of it,
        such as the expiry index."""
        try:
            cls = TOPICS[stored_event.topic]
            state = self.stored_state(stored_event)
            stream = _as_uuid(stored_event.originator_id)
            digest = self.snapshot_digest(state) if cls is UserSnapshot else b""
            state["originator_id"] = stream
            state["originator_version"] = stored_event.originator_version
            written_format = check_format(
                state.pop(FORMAT_FIELD, 1),
                SNAPSHOT_FORMAT if cls is UserSnapshot else FORMAT,
            )
            if cls is UserSnapshot:
                self._open_stored_snapshot(stream, state, written_format, digest)
            elif not opened and SEALED in state:
                del state[SEALED]
                state["metadata"], state["metadata_salt"] = {}, None
            elif SEALED in state or state.get("metadata_commitment") is not None:
                self._open_event(stream, state)
            written = upgrade(cls, state)
            event = cls.model_validate(state)
            if written is not None:
                cast(ContextEvent, event)._written = written
        except LedgerError:
            raise  # LedgerConfigError is a ValueError: a setting, not damage
        except DECODE_ERRORS as error:
            msg = (
                f"stored event {stored_event.topic!r} of stream "
                f"{stored_event.originator_id} version "
                f"{stored_event.originator_version} cannot be decoded: {error}"
            )
            raise MapperDeserialisationError(msg) from error
        return cast(DomainEventProtocol[UUID], event)

    def _keys(self) -> KeyStore:
        if self.keys is None:
            msg = "the mapper has no key store: personal data cannot be sealed"
            raise RuntimeError(msg)
        return self.keys

    def _seal_event(self, event: CarriesMetadata, state: dict[str, Any]) -> None:
        if event.metadata is None:
            msg = "an event whose metadata was erased cannot be stored again"
            raise ValueError(msg)
        plain = [state.pop("metadata"), bytes.fromhex(state.pop("metadata_salt"))]
        cipher = self._keys().for_writing(
            event.originator_id,
            event.key_generation,
            new=event.originator_version == 1,
        )
        place = place_of(_EVENT, event.originator_id, 0, event.key_generation)
        state[SEALED] = seal(cipher, place, self.transcoder.encode(plain))

    def _open_event(self, stream: UUID, state: dict[str, Any]) -> None:
        """Opens the sealed metadata into ``metadata`` and ``metadata_salt``.

        What was stored is what is read, as for any other field: an event whose
        metadata was altered in the database (plain metadata put beside or in
        place of the sealed value, or a sealed value moved from another event)
        reads with that metadata, which is then not what the event's commitment
        (covered by the chain) was made of, so ``verify_chain`` reports it as
        altered. A sealed value that does not open at all is damage (ValueError).
        """
        plain = state.pop("metadata", None)
        plain_salt = state.pop("metadata_salt", None)
        metadata: Any = None
        salt_hex: Any = None
        if SEALED in state:
            sealed = state.pop(SEALED)
            generation = check_generation(state.get("key_generation", 0))
            cipher = self._keys().for_reading(stream, generation)
            if cipher is not None:
                place = place_of(_EVENT, stream, 0, generation)
                metadata, salt = self.transcoder.decode(unseal(cipher, place, sealed))
                salt_hex = salt.hex() if isinstance(salt, bytes) else salt
        if plain is not None:
            metadata = plain
        if plain_salt is not None:
            salt_hex = plain_salt
        state["metadata"], state["metadata_salt"] = metadata, salt_hex

    def _seal_snapshot(self, snapshot: UserSnapshot, state: dict[str, Any]) -> None:
        """Format 3: the contexts' metadata sealed (an empty list when there are
        none), bound to the digest of the rest of the state as stored."""
        metadata = [context.pop("metadata") for context in state["contexts"]]
        state[FORMAT_FIELD] = SNAPSHOT_FORMAT
        generation = snapshot.key_generation
        cipher = self._keys().for_writing(snapshot.originator_id, generation)
        place = place_of(
            _SNAPSHOT, snapshot.originator_id, snapshot.originator_version, generation
        )
        place += self.snapshot_digest(state)
        state[SEALED] = seal(cipher, place, self.transcoder.encode(metadata))

    def snapshot_digest(self, state: dict[str, Any]) -> bytes:
        """The SHA-256 of a snapshot's stored state without its sealed value:
        its msgpack encoding, in the order stored (decoding and encoding again
        gives the bytes written), ``format`` and ``last_hash`` included."""
        rest = {key: value for key, value in state.items() if key != SEALED}
        return hashlib.sha256(_SNAPSHOT_DIGEST + self.transcoder.encode(rest)).digest()

    def _open_stored_snapshot(
        self, stream: UUID, state: dict[str, Any], written: int, digest: bytes
    ) -> None:
        """Opens a snapshot of the format ``written`` (``_open_snapshot``)."""
        if written >= SNAPSHOT_FORMAT:
            self._open_snapshot(stream, state, digest)
        elif SEALED in state:
            self._open_snapshot(stream, state, b"")

    def _open_snapshot(
        self, stream: UUID, state: dict[str, Any], digest: bytes
    ) -> None:
        """Opens the sealed metadata into the contexts. ``digest``: that of a
        snapshot of format 3, which must be sealed; empty for format 2."""
        if any("metadata" in context for context in state["contexts"]):
            msg = "the snapshot holds plain metadata beside its sealed metadata"
            raise ValueError(msg)
        if SEALED not in state:
            msg = f"a snapshot of format {SNAPSHOT_FORMAT} holds no sealed value"
            raise ValueError(msg)
        sealed = state.pop(SEALED)
        generation = check_generation(state.get("key_generation", 0))
        cipher = self._keys().for_reading(stream, generation)
        contexts = state["contexts"]
        if cipher is None:
            for context in contexts:
                context["metadata"], context["erased"] = {}, True
            return
        place = place_of(_SNAPSHOT, stream, state["originator_version"], generation)
        metadata = self.transcoder.decode(unseal(cipher, place + digest, sealed))
        if not isinstance(metadata, list) or len(metadata) != len(contexts):
            msg = "the snapshot's sealed metadata does not match its contexts"
            raise ValueError(msg)
        for context, values in zip(contexts, metadata, strict=True):
            context["metadata"] = values

    def stored_state(self, stored: StoredEvent) -> Any:
        """The stored state decoded (decrypted and decompressed first when the
        library's cipher or compressor is set), nothing opened into it."""
        data = stored.state
        if self.cipher:
            data = self.cipher.decrypt(data)
        if self.compressor:
            data = self.compressor.decompress(data)
        return self.transcoder.decode(data)

    def vouched_snapshot(self, stored: StoredEvent) -> bool:
        """Whether decoding the stored snapshot authenticates it: it is of format
        3 (or newer: decoding refuses it) and its key exists, so decoding opens
        its sealed value with its digest bound, or raises if it was altered. A
        msgpack decode, no more."""
        state = self.stored_state(stored)
        if not isinstance(state, dict):
            return False
        written = state.get(FORMAT_FIELD, 1)
        if not isinstance(written, int) or written < SNAPSHOT_FORMAT:
            return False
        stream = _as_uuid(stored.originator_id)
        return (
            self._keys().for_reading(
                stream, check_generation(state.get("key_generation", 0))
            )
            is not None
        )

    def authentic_snapshot(self, stored: StoredEvent) -> dict[str, Any] | None:
        """A stored snapshot's state (msgpack-decoded, nothing opened into it)
        when it is of format 3 and its sealed value opens: then every field is
        what the ledger stored when it took the snapshot. None when it cannot
        be told so (format 2 or older, or its key destroyed): a replay of the
        events must decide. ValueError when the snapshot was altered."""
        state = self.stored_state(stored)
        if not isinstance(state, dict):
            msg = "the snapshot's state is not a map"
            raise TypeError(msg)
        written = state.get(FORMAT_FIELD, 1)
        written = check_format(written, SNAPSHOT_FORMAT)
        if written < SNAPSHOT_FORMAT:
            return None
        sealed = state.get(SEALED)
        if not isinstance(sealed, bytes):
            msg = f"a snapshot of format {SNAPSHOT_FORMAT} holds no sealed value"
            raise ValueError(msg)
        stream = _as_uuid(stored.originator_id)
        generation = check_generation(state.get("key_generation", 0))
        cipher = self._keys().for_reading(stream, generation)
        if cipher is None:
            return None
        place = place_of(_SNAPSHOT, stream, stored.originator_version, generation)
        opened = self.transcoder.decode(
            unseal(cipher, place + self.snapshot_digest(state), sealed)
        )
        if not isinstance(opened, list) or len(opened) != len(state["contexts"]):
            msg = "the snapshot's sealed metadata does not match its contexts"
            raise ValueError(msg)
        return state


def _as_uuid(value: UUID | str) -> UUID:
    return value if isinstance(value, UUID) else UUID(value)
