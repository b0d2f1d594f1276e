"""Moving a user to another shard (being written)."""

from typing import TYPE_CHECKING
from uuid import UUID

if TYPE_CHECKING:
    from ledger._sharded import ShardedLedger


def recover_move(ledger: "ShardedLedger", stream: UUID) -> bool:
    """Finishes or undoes a move of ``stream`` whose mover died; False when a
    mover is still at work."""
    del ledger, stream
    return False
