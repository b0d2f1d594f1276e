"""A sharded feed's part of one shard (``Slot``), and what it tells its consumer
of the shards that fail."""

from collections import deque
from dataclasses import dataclass, field

from ledger._domain.models import LedgerEvent
from ledger._store.feed import ChangeFeed
from ledger.errors import StorageUnavailable

ShardedChange = tuple[str, LedgerEvent]
Failures = dict[int, BaseException]
"""Shard -> why it gave nothing."""


@dataclass
class Slot:
    """The feed's part of one shard."""

    start: int | None  # None: the shard's head, once reached
    part: ChangeFeed | None = None
    held: deque[tuple[int, LedgerEvent]] = field(default_factory=deque)
    asking: bool = False  # a head was asked of the shard's hub
    reach_from: int | None = None  # waits for a reach of the link after this many
    failure: BaseException | None = None
    retry_at: float = 0.0  # a part that failed to catch up tries again then


def told_failure(failing: Failures, home: int | None, every: bool) -> None:
    """Raises the failure of the first shard that matters to the feed (every
    shard to a feed of every user; else its user's shard, any while unknown): a
    new StorageUnavailable for the database's, anything else as it is."""
    for shard, failure in sorted(failing.items()):
        if not (every or home is None or home == shard):
            continue
        if not isinstance(failure, StorageUnavailable):
            raise failure  # not the database's: a fault to see as it is
        error = StorageUnavailable(f"shard {shard}: {failure.where}", failure.cause)
        error.add_note(
            "the feed goes on with the other shards' events, and with this "
            "shard's from its position when it is back: iterate again"
        )
        raise error from failure
