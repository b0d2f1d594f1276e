"""The domain events of a user's context stream: frozen pydantic models.

Their topics are explicit and stable, so classes may move without breaking stored
events. This module must not use ``from __future__ import annotations``: pydantic
reads the field annotations at class creation.
"""

from typing import Any, ClassVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict, PrivateAttr
from pydantic_core import to_jsonable_python

from ledger._domain.hashing import chain_form
from ledger._domain.models import EventKind, LedgerEvent, UtcDatetime

STORAGE_FIELDS = frozenset({"key_generation", "metadata_commitment", "metadata_salt"})
"""Fields an event's JSON form shows its own way, or not at all (``ledger_record``)."""


class ContextEvent(BaseModel):
    """Fields every event of a user's stream carries."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    TOPIC: ClassVar[str]
    KIND: ClassVar[EventKind]

    originator_id: UUID
    originator_version: int
    timestamp: UtcDatetime
    user_id: str
    context_id: str
    thread_id: str
    run_id: str | None
    prev_hash: str
    command_id: str | None = None
    """The call that appended the event (older events have none)."""
    request_id: str | None = None
    """The caller's request id, if it gave one: a repeat of it is not applied."""
    key_generation: int = 0
    """Which of the user's data keys seals the event's personal data (a new key
    after each ``forgotten`` event). Not part of its JSON form."""

    _written: dict[str, Any] | None = PrivateAttr(default=None)
    """The JSON form as the event was written, when an older class version wrote
    it (set by the mapper before upcasting): the chain covers what was written."""

    def to_ledger_event(self) -> LedgerEvent:
        """The auditor's view of this event."""
        return LedgerEvent.model_validate(self.ledger_record())

    def chain_record(self) -> dict[str, Any]:
        """What the hash chain covers of this event (``hashing.chain_form``)."""
        return chain_form(self.written_record())

    def written_record(self) -> dict[str, Any]:
        """The JSON form as stored: ``ledger_record`` unless an older class version
        wrote the event. Exports write it, so their lines hash as the chain does."""
        return self._written if self._written is not None else self.ledger_record()

    def ledger_record(self) -> dict[str, Any]:
        """``to_ledger_event().model_dump(mode="json")``, built directly: the chain
        hashes this on every append and replay."""
        data = self.model_dump(mode="json", exclude=self.unset_ids() | STORAGE_FIELDS)
        return shape_record(
            self.KIND,
            data,
            getattr(self, "metadata_commitment", None),
            getattr(self, "metadata_salt", None),
            self.key_generation,
        )

    def unset_ids(self) -> set[str]:
        """The stream id, and the call ids the event does not have: neither is
        stored in its state nor shown in its details."""
        unset = {"originator_id"}
        if self.command_id is None:
            unset.add("command_id")
        if self.request_id is None:
            unset.add("request_id")
        return unset


class CarriesMetadata(ContextEvent):
    """An event with personal data: its metadata (patch).

    Format 2 (``metadata_commitment`` set): the metadata and its salt are stored
    sealed under the user's data key; ``metadata`` is None once that key is
    destroyed (erased). Format 1 (events written before sealing): stored as is.
    """

    metadata: dict[str, Any] | None
    metadata_commitment: str | None = None
    metadata_salt: str | None = None

    @property
    def erased(self) -> bool:
        """Whether the event's personal data was erased (its key destroyed)."""
        return self.metadata is None


class ContextCreated(CarriesMetadata):
    """A new context was opened for a thread that had no active one."""

    TOPIC: ClassVar[str] = "ctxledger:ContextCreated"
    KIND: ClassVar[EventKind] = "created"

    ttl_seconds: float | None


class ContextReused(CarriesMetadata):
    """The thread's active context was opened again; ``metadata`` is the patch."""

    TOPIC: ClassVar[str] = "ctxledger:ContextReused"
    KIND: ClassVar[EventKind] = "reused"

    ttl_seconds: float | None
    reuse_count: int


class ContextUpdated(CarriesMetadata):
    """Metadata or run id of an active context changed; ``metadata`` is the patch."""

    TOPIC: ClassVar[str] = "ctxledger:ContextUpdated"
    KIND: ClassVar[EventKind] = "updated"


class ContextExpired(ContextEvent):
    """The context's time to live ran out at ``expires_at``."""

    TOPIC: ClassVar[str] = "ctxledger:ContextExpired"
    KIND: ClassVar[EventKind] = "expired"

    reason: str
    expires_at: UtcDatetime


class ContextCleared(ContextEvent):
    """The context was ended on request."""

    TOPIC: ClassVar[str] = "ctxledger:ContextCleared"
    KIND: ClassVar[EventKind] = "cleared"

    reason: str


class UserForgotten(ContextEvent):
    """The user's personal data was erased: the data key of ``key_generation`` was
    destroyed, and every active context of the user ended. It names no context:
    its ``context_id`` and ``thread_id`` are empty."""

    TOPIC: ClassVar[str] = "ctxledger:UserForgotten"
    KIND: ClassVar[EventKind] = "forgotten"

    reason: str


EVENT_CLASSES: tuple[type[ContextEvent], ...] = (
    ContextCreated,
    ContextReused,
    ContextUpdated,
    ContextExpired,
    ContextCleared,
    UserForgotten,
)
EVENT_TOPICS: tuple[str, ...] = tuple(cls.TOPIC for cls in EVENT_CLASSES)
EVENT_CLASS_BY_KIND: dict[EventKind, type[ContextEvent]] = {
    cls.KIND: cls for cls in EVENT_CLASSES
}


ENVELOPE = ("user_id", "context_id", "thread_id", "run_id", "timestamp")
"""Fields of every event that its JSON form shows beside ``kind``, ``version`` and
``prev_hash`` rather than in its details, in the order ``ledger_form`` takes them."""


def ledger_form(
    kind: EventKind,
    envelope: tuple[Any, ...],
    version: int,
    prev_hash: str,
    details: dict[str, Any],
) -> dict[str, Any]:
    """An event's JSON form (``LedgerEvent``'s fields): the one layout, given the
    values of ``ENVELOPE`` in order (its time as the caller wants it shown)."""
    user_id, context_id, thread_id, run_id, occurred_at = envelope
    return {
        "user_id": user_id,
        "kind": kind,
        "context_id": context_id,
        "thread_id": thread_id,
        "run_id": run_id,
        "occurred_at": occurred_at,
        "version": version,
        "prev_hash": prev_hash,
        "details": details,
    }


def shape_details(
    kind: EventKind,
    details: dict[str, Any],
    commitment: str | None,
    salt: str | None,
    generation: int,
) -> dict[str, Any]:
    """Adds to an event's details (in JSON form) the storage fields its JSON form
    shows: the key generation where it means something (on events with sealed
    metadata, format 2, and on ``forgotten``), the commitment, and the salt or,
    once the key is destroyed, the erasure mark. Returns ``details``."""
    if commitment is not None or kind == "forgotten":
        details["key_generation"] = generation
    if commitment is not None:
        details["metadata_commitment"] = commitment
        if details.get("metadata") is None:
            details["erased"] = True
        else:
            details["metadata_salt"] = salt
    return details


def shape_record(
    kind: EventKind,
    data: dict[str, Any],
    commitment: str | None,
    salt: str | None,
    generation: int,
) -> dict[str, Any]:
    """An event's JSON form from its fields in JSON form (``data`` is consumed:
    what is left of it once the envelope is taken are the details)."""
    envelope = tuple(data.pop(name) for name in ENVELOPE)
    version, prev_hash = data.pop("originator_version"), data.pop("prev_hash")
    details = shape_details(kind, data, commitment, salt, generation)
    return ledger_form(kind, envelope, version, prev_hash, details)


def written_record(kind: EventKind, state: dict[str, Any]) -> dict[str, Any]:
    """The JSON form of an event from its stored state as written (before any
    upcasting), the same as ``ledger_record`` of the class that wrote it."""
    data = {
        key: value
        for key, value in state.items()
        if key not in STORAGE_FIELDS and key != "originator_id"
    }
    for key in ("command_id", "request_id"):
        if data.get(key, "") is None:
            del data[key]
    return shape_record(
        kind,
        to_jsonable_python(data),
        state.get("metadata_commitment"),
        state.get("metadata_salt"),
        state.get("key_generation", 0),
    )


def from_ledger_event(event: LedgerEvent, originator_id: UUID) -> ContextEvent:
    """The domain event an auditor's ``LedgerEvent`` was made from (its inverse)."""
    details = {k: v for k, v in event.details.items() if k != "erased"}
    return EVENT_CLASS_BY_KIND[event.kind].model_validate(
        {
            **details,
            "originator_id": originator_id,
            "originator_version": event.version,
            "timestamp": event.occurred_at,
            "user_id": event.user_id,
            "context_id": event.context_id,
            "thread_id": event.thread_id,
            "run_id": event.run_id,
            "prev_hash": event.prev_hash,
        }
    )
