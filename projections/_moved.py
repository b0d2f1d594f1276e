"""Each event once in the views, when a move has put it in two shards' logs.

The rule is ``ledger._store.shard_copies.taken_elsewhere``, judged from the view's
own tracking positions (one per shard, and for a stream that moved off a shard,
how far the worker read it there: ``projections._moved_reads``), so a worker that
resumes decides as it would have. Two workers of one view (one per shard) can
meet on a moved stream: the target's worker reads a copy while the source's
worker applies the original. So they decide one at a time:

- a batch that holds copies also takes the view's lock of each shard they were
  copied from, so it waits for that shard's batch under way, and reads that
  shard's positions after it committed;
- a batch reads the streams that moved away from its shard (and the copies'
  positions) only once it holds its lock, so a move fenced after that read is
  met by the target's worker, which then waits for this batch.

A ledger without shards has no rule: its batches pay nothing for this.
"""

from collections.abc import Callable, Iterator, Mapping, Sequence
from uuid import UUID

from ledger._domain.contexts import user_aggregate_id
from ledger.log_source import EventRecord, MovesAround, Positioned, taken_elsewhere
from projections import _moved_reads as moved_reads
from projections._applying import Target
from projections._shard_set import ShardSet, view_position
from projections._store import Tx, ViewStore

CopyAt = Callable[[int, UUID, int], int | None]
Judged = tuple[int, int | None, EventRecord, UUID]
"""An event's position, the position the view keeps for it (None: taken from
another shard's log), the event and its stream."""


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
        places = {at for c in moves.copies.values() for at, _ in c.places}
        others = sorted(places - {self.shard})
        return [t.generation.of_shard(s).key for t in targets for s in others]

    def select(
        self, tx: Tx, target: Target, events: Sequence[Positioned]
    ) -> list[Positioned]:
        """The events the view takes, at the positions it keeps for them; keeps
        how far the batch read the streams that moved away."""
        if not events:
            return []
        moves = self._moves(tx, events[0][0], events[-1][0])
        if not moves.copies and not moves.departed:
            return [(view_position(self.shard, p), event) for p, event in events]
        own = target.key
        if moves.departed:  # all the worker read before was stored then
            before = self._store.position(tx, own)
            moved_reads.first_seen(tx, own, moves.departed, before)
        positions = _Positions(tx, target, self._shards.ids(), self._store)
        positions.streams = _judged_streams(events, moves)
        judged = list(judge(self.shard, events, moves, positions.of, self._copy_at))
        read = {  # originals only: a copy read here is no original read here
            stream: at
            for at, _, _, stream in judged
            if stream in moves.departed and at not in moves.copies
        }
        if read:
            moved_reads.raise_to(tx, own, read)
        return [(kept, event) for _, kept, event, _ in judged if kept is not None]

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

    def _copy_at(self, shard: int, stream: UUID, version: int) -> int | None:
        with self._shards.failures(shard):
            return self._shards.source(shard).copy_position(stream, version)


class _Positions:
    """The view's positions as ``tx`` sees them, per stream, read on first need."""

    def __init__(
        self, tx: Tx, target: Target, shards: list[int], store: ViewStore
    ) -> None:
        self._tx, self._store = tx, store
        self._all = {s: target.generation.of_shard(s).key for s in shards}
        self.streams: set[UUID] = set()
        """The streams whose read-through positions to read."""
        self._keys: dict[int, str] | None = None
        self._kept: dict[tuple[str, UUID], int] = {}
        self._at: dict[int, int] = {}

    def of(self, stream: UUID) -> Mapping[int, int]:
        keys = self._keys if self._keys is not None else self._read()
        return {
            shard: self._kept.get((key, stream), self._at[shard])
            for shard, key in keys.items()
        }

    def _read(self) -> dict[int, str]:
        keys, tx = self._all, self._tx
        self._at = {shard: self._store.position(tx, key) for shard, key in keys.items()}
        self._kept = moved_reads.read_through(tx, keys.values(), self.streams)
        self._keys = keys
        return keys


def _judged_streams(events: Sequence[Positioned], moves: MovesAround) -> set[UUID]:
    """The streams of the batch's copies and of its events that moved away."""
    copied = {e.user_id for p, e in events if p in moves.copies}
    moved = {e.user_id for _, e in events} if moves.departed else set()
    streams = {user: user_aggregate_id(user) for user in copied | moved}
    return {streams[user] for user in copied} | {
        streams[user] for user in moved if streams[user] in moves.departed
    }


def judge(
    shard: int,
    events: Sequence[Positioned],
    moves: MovesAround,
    positions: Callable[[UUID], Mapping[int, int]],
    copy_at: CopyAt,
) -> Iterator[Judged]:
    """Each event of ``shard``'s log with the position a view keeps for it, or
    None when the view took it from another shard's log (``taken_elsewhere``,
    from the view's ``positions`` for the event's stream)."""
    streams: dict[str, UUID] = {}
    for position, event in events:
        stream = streams.get(event.user_id)
        if stream is None:
            stream = streams[event.user_id] = user_aggregate_id(event.user_id)
        copy = moves.copies.get(position)
        if copy is None and stream not in moves.departed:
            yield position, view_position(shard, position), event, stream
        elif taken_elsewhere(
            position,
            stream,
            event.version,
            moves=moves,
            positions=positions(stream),
            copy_at=copy_at,
        ):
            yield position, None, event, stream
        elif copy is None:
            yield position, view_position(shard, position), event, stream
        else:
            kept = view_position(*copy.first)  # where it was first stored
            yield position, kept, event, stream
