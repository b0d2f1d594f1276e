"""A replay of every shard's log up to a view's positions, each event once.

``verify`` compares a view with it. The shards are replayed one after the other,
each in log order, and an event that a move put in two logs is taken by the rule
the views follow (``projections._moved.judge``), from the replay's own positions:
so a user's events come in order, and the replay holds exactly the events the
view holds at those positions (whichever log the view took each from), each at
the position the view keeps for it.

The audit view compares its rows in position order: for it the replay is read
twice, first to judge the moved events, then merged by position.
"""

import heapq
from collections.abc import Iterator, Mapping
from uuid import UUID

from ledger.log_source import Positioned
from projections._moved import judge
from projections._shard_set import ShardSet, view_position
from projections._shard_work import ShardReader


class ShardReplay:
    """The events a view at ``bounds`` (shard -> position) holds."""

    def __init__(self, shards: ShardSet, bounds: Mapping[int, int], size: int) -> None:
        self.shards = shards
        self.bounds = dict(bounds)
        self.size = size
        self._read: dict[int, int] = {}
        self._read_moved: dict[tuple[int, UUID], int] = {}
        """How far the replay read a stream on a shard it moved away from."""
        self._left_out: dict[int, set[int]] = {}
        self._copies: list[Positioned] = []

    def in_log_order(self) -> Iterator[Positioned]:
        """Shard after shard, each in log order (a user's events in order)."""
        self._read, self._read_moved, self._left_out, self._copies = {}, {}, {}, []
        for shard in self.shards.ids():
            yield from self._shard(shard)
            self._read[shard] = self.bounds.get(shard, 0)

    def by_position(self) -> Iterator[Positioned]:
        """The same events in order of the positions the view keeps."""
        for _ in self.in_log_order():
            pass  # judges the moved events: which were left out, which copies taken
        copies = sorted(self._copies, key=_position)
        kept = [self._kept(shard) for shard in self.shards.ids()]
        return heapq.merge(*kept, iter(copies), key=_position)

    def _shard(self, shard: int) -> Iterator[Positioned]:
        left_out = self._left_out.setdefault(shard, set())
        source = self.shards.source(shard)
        before = 0
        for page in self._pages(shard):
            with self.shards.failures(shard):
                moves = source.moves(page[0][0], page[-1][0])
            for stream in moves.departed:  # as the views' workers keep it
                self._read_moved.setdefault((shard, stream), before)
            before = page[-1][0]
            judged = judge(shard, page, moves, self._positions, self._copy_at)
            for position, kept, event, stream in judged:
                if stream in moves.departed and position not in moves.copies:
                    self._read_moved[shard, stream] = position  # an original
                if kept is None or position in moves.copies:
                    left_out.add(position)  # by position: placed by where it began
                if kept is not None:
                    if position in moves.copies:
                        self._copies.append((kept, event))
                    yield kept, event

    def _positions(self, stream: UUID) -> dict[int, int]:
        return {
            shard: self._read_moved.get((shard, stream), self._read.get(shard, 0))
            for shard in self.shards.ids()
        }

    def _kept(self, shard: int) -> Iterator[Positioned]:
        left_out = self._left_out.get(shard, set())
        for page in self._pages(shard):
            for position, event in page:
                if position not in left_out:
                    yield view_position(shard, position), event

    def _pages(self, shard: int) -> Iterator[list[Positioned]]:
        reader = ShardReader(self.shards.source(shard), shard, self.shards)
        after, up_to = 0, self.bounds.get(shard, 0)
        while after < up_to:
            page = reader.batch(after, self.size, up_to)
            if not page:
                return
            yield page
            after = page[-1][0]

    def _copy_at(self, shard: int, stream: UUID, version: int) -> int | None:
        with self.shards.failures(shard):
            return self.shards.source(shard).copy_position(stream, version)


def _position(item: Positioned) -> int:
    return item[0]
