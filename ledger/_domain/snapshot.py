"""``UserSnapshot``: a user's aggregate at one version, so loading skips replay."""

from typing import TYPE_CHECKING, ClassVar, Self
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from ledger._domain.models import Context, UtcDatetime

if TYPE_CHECKING:
    from ledger._domain.contexts import UserContexts


class UserSnapshot(BaseModel):
    """The state of a user's aggregate at one version, so loading skips replay."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    TOPIC: ClassVar[str] = "ctxledger:UserSnapshot"

    originator_id: UUID
    originator_version: int
    timestamp: UtcDatetime
    user_id: str
    created_on: UtcDatetime
    modified_on: UtcDatetime
    last_hash: str
    contexts: list[Context]
    requests: list[tuple[str, int, int]] = Field(default_factory=list)
    """The request window: (request id, first version, last version), oldest first."""
    key_generation: int = 0
    """The data key that seals the contexts' metadata (and new events')."""
    forgotten_at: int = 0
    """The version of the user's last ``forgotten`` event (0: none)."""

    @classmethod
    def take(cls, aggregate: "UserContexts") -> Self:
        """The snapshot of an aggregate just saved (see LedgerApplication.record)."""
        return cls(
            originator_id=aggregate.id,
            originator_version=aggregate.version,
            timestamp=aggregate.modified_on,
            user_id=aggregate.user_id,
            created_on=aggregate.created_on,
            modified_on=aggregate.modified_on,
            last_hash=aggregate.last_hash,
            contexts=list(aggregate.contexts.values()),
            requests=[(rid, *versions) for rid, versions in aggregate.requests.items()],
            key_generation=aggregate.key_generation,
            forgotten_at=aggregate.forgotten_at,
        )
