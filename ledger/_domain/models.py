"""The values the ledger returns: an active context and an entry of its history."""

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

EventKind = Literal["created", "reused", "updated", "expired", "cleared", "forgotten"]
EVENT_KINDS: tuple[EventKind, ...] = (
    "created",
    "reused",
    "updated",
    "expired",
    "cleared",
    "forgotten",
)


OnLimit = Literal["refuse", "evict"]
"""What opening a new context does for a user at the limit of active contexts:
refuse it (ContextLimitExceeded), or evict the least recently used ones."""
ON_LIMIT: tuple[OnLimit, ...] = ("refuse", "evict")
EVICTED = "evicted"
"""The reason of a ``cleared`` event by which the ledger evicted a context to make
room (``on_limit="evict"``); reserved, so callers cannot give it."""


UtcDatetime = Annotated[AwareDatetime, AfterValidator(lambda at: at.astimezone(UTC))]
"""A timezone-aware datetime, kept in UTC so every encoding of it is the same."""


class Context(BaseModel):
    """An active execution context of one user's thread."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    context_id: str
    user_id: str
    thread_id: str
    run_id: str | None
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: UtcDatetime
    last_used_at: UtcDatetime
    expires_at: UtcDatetime | None
    ttl_seconds: float | None
    reuse_count: int = 0
    erased: bool = False
    """Its metadata was erased (``ContextLedger.forget_user``): ``metadata`` is
    empty, whatever it held."""

    def is_due(self, now: datetime) -> bool:
        """Whether the context's time to live has run out at ``now``."""
        return self.expires_at is not None and self.expires_at <= now


class LedgerEvent(BaseModel):
    """One lifecycle change of a context, as an auditor reads it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    user_id: str
    kind: EventKind
    context_id: str
    thread_id: str
    run_id: str | None
    occurred_at: UtcDatetime
    version: int
    details: dict[str, Any]
    """The fields of this kind of event. From format 2 on, personal data
    (``metadata``) comes with ``metadata_commitment``, which the chain covers,
    and ``metadata_salt``, which opens it; once erased, ``metadata`` is None and
    ``erased`` is true."""
    prev_hash: str

    @property
    def erased(self) -> bool:
        """Whether the event's personal data was erased."""
        return self.details.get("erased") is True
