"""The values the views return."""

from typing import Any

from pydantic import BaseModel, ConfigDict

from ledger._domain.models import EventKind, UtcDatetime


class AuditRow(BaseModel):
    """One event of the ledger as the compliance audit view keeps it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    position: int
    """The event's position in the ledger's log. On a sharded ledger: shard 0's
    events keep theirs, another shard's are ``shard * 2**48 + position``, and an
    event a move copied keeps the one it had where it was first read from."""
    user_id: str
    kind: EventKind
    context_id: str
    thread_id: str
    run_id: str | None
    occurred_at: UtcDatetime
    details: dict[str, Any]


class ContinuityFigures(BaseModel):
    """Continuity of one user's contexts, or of all users when ``user_id`` is None.

    ``cleared`` counts the contexts callers cleared, ``evicted`` those the ledger
    cleared to make room for a new one (``on_limit="evict"``; ``cleared`` events
    with reason ``"evicted"``). ``threads_with_overlap`` counts threads that ever
    had a second context created while one was active: the failure the ledger
    exists to prevent, so it must be 0.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    user_id: str | None
    users: int
    created: int
    reused: int
    updated: int
    expired: int
    cleared: int
    evicted: int
    never_reused: int
    reuses_per_created: float | None
    threads_with_overlap: int


class ViewStatus(BaseModel):
    """How far a view has processed the ledger."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    view: str
    position: int
    head: int
    lag: int


class ShardViewStatus(ViewStatus):
    """How far a view has processed one shard's log (a sharded ledger);
    ``reachable`` is False when the shard could not be read (then ``head`` is
    the view's position and ``lag`` 0: unknown)."""

    shard: int
    reachable: bool = True
