"""The domain events of a user's context stream: frozen pydantic models.

Their topics are explicit and stable, so classes may move without breaking stored
events. This module must not use ``from __future__ import annotations``: pydantic
reads the field annotations at class creation.
"""

from typing import Any, ClassVar
from uuid import UUID

from pydantic import BaseModel, ConfigDict

from ledger.domain.models import EventKind, LedgerEvent, UtcDatetime


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

    def to_ledger_event(self) -> LedgerEvent:
        """The auditor's view of this event."""
        return LedgerEvent.model_validate(self.ledger_record())

    def ledger_record(self) -> dict[str, Any]:
        """``to_ledger_event().model_dump(mode="json")``, built directly: the chain
        hashes this on every append and replay."""
        data = self.model_dump(mode="json", exclude=self.unset_ids())
        return {
            "user_id": data.pop("user_id"),
            "kind": self.KIND,
            "context_id": data.pop("context_id"),
            "thread_id": data.pop("thread_id"),
            "run_id": data.pop("run_id"),
            "occurred_at": data.pop("timestamp"),
            "version": data.pop("originator_version"),
            "prev_hash": data.pop("prev_hash"),
            "details": data,  # what is left: the fields of this kind of event
        }

    def unset_ids(self) -> set[str]:
        """The stream id, and the call ids the event does not have: neither is
        stored in its state nor shown in its details."""
        unset = {"originator_id"}
        if self.command_id is None:
            unset.add("command_id")
        if self.request_id is None:
            unset.add("request_id")
        return unset


class ContextCreated(ContextEvent):
    """A new context was opened for a thread that had no active one."""

    TOPIC: ClassVar[str] = "ctxledger:ContextCreated"
    KIND: ClassVar[EventKind] = "created"

    metadata: dict[str, Any]
    ttl_seconds: float | None


class ContextReused(ContextEvent):
    """The thread's active context was opened again; ``metadata`` is the patch."""

    TOPIC: ClassVar[str] = "ctxledger:ContextReused"
    KIND: ClassVar[EventKind] = "reused"

    metadata: dict[str, Any]
    ttl_seconds: float | None
    reuse_count: int


class ContextUpdated(ContextEvent):
    """Metadata or run id of an active context changed; ``metadata`` is the patch."""

    TOPIC: ClassVar[str] = "ctxledger:ContextUpdated"
    KIND: ClassVar[EventKind] = "updated"

    metadata: dict[str, Any]


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


EVENT_CLASSES: tuple[type[ContextEvent], ...] = (
    ContextCreated,
    ContextReused,
    ContextUpdated,
    ContextExpired,
    ContextCleared,
)
EVENT_TOPICS: tuple[str, ...] = tuple(cls.TOPIC for cls in EVENT_CLASSES)
EVENT_CLASS_BY_KIND: dict[EventKind, type[ContextEvent]] = {
    cls.KIND: cls for cls in EVENT_CLASSES
}


def from_ledger_event(event: LedgerEvent, originator_id: UUID) -> ContextEvent:
    """The domain event an auditor's ``LedgerEvent`` was made from (its inverse)."""
    return EVENT_CLASS_BY_KIND[event.kind].model_validate(
        {
            **event.details,
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
