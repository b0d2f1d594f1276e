"""Each event once in the views, when a move has put it in two shards' logs.

The rule is ``ledger._store.shard_copies.taken_elsewhere``, judged from the view's
own tracking positions (one per shard), so a worker that resumes decides as it
would have. Two workers of one view (one per shard) can meet on a moved stream:
the target's worker reads a copy while the source's worker applies the original.
So they decide one at a time:

- a batch that holds copies also takes the view's lock of each shard they were
  copied from, so it waits for that shard's batch under way, and reads that
  shard's position after it committed;
- a batch reads the streams that moved away from its shard (and the copies'
  positions) only once it holds its lock, so a move fenced after that read is
  met by the target's worker, which then waits for this batch.

A ledger without shards has no rule: its batches pay nothing for this.
"""

from collections.abc import Callable, Iterator, Mapping, Sequence
from uuid import UUID

from ledger._domain.contexts import user_aggregate_id
from ledger.log_source import EventRecord, MovesAround, Positioned, taken_elsewhere
from projections._applying import Target
from projections._shard_set import ShardSet, view_position
from projections._store import Tx, ViewStore


class MovedStreams:
    """The rule a shard's log adds to its batches (``BatchRule``)."""

    def __init__(self, shard: int, shards: ShardSet, store: ViewStore) -> None:
        self.shard = shard
        self._shards = shards
        self._store = store
        self._fresh: tuple[Tx, int, int, MovesAround] | None = None

    def locks(
        self, targets: Sequence[Target], events: Sequence[Positioned]
    ) -> list[str]:
        """The view's locks of the shards that the batch's copies came from."""
        if not events:
            return []
        moves = self._read(events[0][0], events[-1][0])
        others = sorted({c.from_shard for c in moves.copies.values()} - {self.shard})
        return [t.generation.of_shard(s).key for t in targets for s in others]

    def select(
        self, tx: Tx, target: Target, events: Sequence[Positioned]
    ) -> list[Positioned]:
        """The events the view takes, at the positions it keeps for them."""
        if not events:
            return []
        moves = self._moves(tx, events[0][0], events[-1][0])
        if not moves.copies and not moves.departed:
            return [(view_position(self.shard, p), event) for p, event in events]
        judged = judge(
            self.shard,
            events,
            moves,
            lambda: self._positions(tx, target),
            self._copy_at,
        )
        return [(kept, event) for _, kept, event in judged if kept is not None]

    def _moves(self, tx: Tx, first: int, last: int) -> MovesAround:
        """The moves around the batch, read in ``tx`` (once for all its views)."""
        fresh = self._fresh
        if fresh is not None and fresh[0] is tx and fresh[1:3] == (first, last):
            return fresh[3]
        moves = self._read(first, last)
        self._fresh = (tx, first, last, moves)
        return moves

    def _read(self, first: int, last: int) -> MovesAround:
        with self._shards.failures(self.shard):
            return self._shards.source(self.shard).moves(first, last)

    def _positions(self, tx: Tx, target: Target) -> dict[int, int]:
        """The view's position on every shard, as ``tx`` sees them."""
        generation = target.generation
        return {
            shard: self._store.position(tx, generation.of_shard(shard).key)
            for shard in self._shards.ids()
        }

    def _copy_at(self, shard: int, stream: UUID, version: int) -> int | None:
        with self._shards.failures(shard):
            return self._shards.source(shard).copy_position(stream, version)


CopyAt = Callable[[int, UUID, int], int | None]


def judge(
    shard: int,
    events: Sequence[Positioned],
    moves: MovesAround,
    positions: Callable[[], Mapping[int, int]],
    copy_at: CopyAt,
) -> Iterator[tuple[int, int | None, EventRecord]]:
    """Each event of ``shard``'s log with the position a view keeps for it, or
    None when the view took it from another shard's log (``taken_elsewhere``,
    from the view's ``positions``: read on first need, once)."""
    streams: dict[str, UUID] = {}
    known: Mapping[int, int] | None = None
    for position, event in events:
        stream = streams.get(event.user_id)
        if stream is None:
            stream = streams[event.user_id] = user_aggregate_id(event.user_id)
        copy = moves.copies.get(position)
        if copy is None and stream not in moves.departed:
            yield position, view_position(shard, position), event
            continue
        known = positions() if known is None else known
        if taken_elsewhere(
            position,
            stream,
            event.version,
            moves=moves,
            positions=known,
            copy_at=copy_at,
        ):
            yield position, None, event
        elif copy is None:
            yield position, view_position(shard, position), event
        else:
            yield position, view_position(copy.from_shard, copy.from_position), event
