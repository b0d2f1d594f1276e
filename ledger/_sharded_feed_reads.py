"""How far a feed of every user read, on a shard, the stream of a user that moved
off it: the position ``taken_elsewhere`` is given for that stream on that shard.

``taken_elsewhere`` judges a copy by the reader's position on the shard it came
from: past the original's position, the reader took the original. A move deletes
the originals once it is over, though, and a feed that gets there after that
passes their positions without reading them. So, as the views do
(``projections._moved_reads``), the feed keeps for each stream that moved off a
shard the position up to which it read that stream there: its position on the
shard when it first found the stream gone (everything before was read while the
originals were stored), raised by every event of the stream it reads there after.

It keeps only what can still decide something: the streams that left a shard
while the feed was open, and, for a feed started from a position, those that had
left before and have copies it has not passed, or are being moved (read once per
shard before it judges a copy from there); each until the feed read all the
stream's originals or passed all its copies. What it keeps below its position
travels in the feed's position (``SHARD:STREAM:POSITION``), so a resumed feed
decides the same. A feed of one user needs none of this: its positions are its
user's stream's already.
"""

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from uuid import UUID

from ledger._sharded_feed_links import ShardLink
from ledger._sharded_feed_sql import Ends
from ledger._store.shard_copies import MovesAround

LinkOf = Callable[[int], ShardLink]
Wake = Callable[[], None]
ASK_AGAIN_SECONDS = 1.0
"""How long a feed waits before it asks again where copies end (none yet)."""


@dataclass
class _Read:
    position: int
    target: int | None = None  # the shard the stream went to, once known
    end: Ends | None = None  # where its copies there end, once read
    asked: float = 0.0


class MovedReads:
    """The read-through positions of one feed for streams that moved off shards."""

    def __init__(
        self,
        links: LinkOf,
        shards: list[int],
        loaded: Mapping[tuple[int, UUID], int] | None,
        created: int,
    ) -> None:
        """``loaded``: what the position a feed resumes from kept (None: the feed
        starts at the heads, so every stream gone was gone before it)."""
        self._links = links
        self._reads: dict[UUID, dict[int, _Read]] = {}
        for (shard, stream), position in (loaded or {}).items():
            self._reads.setdefault(stream, {})[shard] = _Read(position)
        self._seen = {shard: len(links(shard).departures()) for shard in shards}
        self._ready = set(shards) if loaded is None else set()
        self._asked_at: dict[int, dict[int, int]] = {}
        self._created = created

    def add_shard(self, shard: int) -> None:
        """A shard added after the feed started: read from its start."""
        self._seen[shard] = len(self._links(shard).departures())
        self._ready.discard(shard)

    def ready(self, shard: int, taken: Mapping[int, int], wake: Wake) -> bool:
        """Whether the shard's events, and copies from it, can be judged: the
        streams that had left it before the feed started and still matter are
        kept (asked for, if not yet)."""
        if shard in self._ready:
            return True
        at = self._asked_at.setdefault(shard, dict(taken))
        directory = self._links(0).moving(self._created)
        if directory is None:
            self._links(0).ask_moving(wake)
            return False
        moving_read, moving = directory
        found: dict[int, dict[UUID, Ends]] = {}
        for target, position in at.items():
            if target == shard:
                continue
            link = self._links(target)
            after = link.copies_after(shard, position, newer_than=moving_read)
            if after is None:
                link.ask_copies_after(shard, position, wake)
                return False
            found[target] = after
        start = at.get(shard, 0)  # nothing of the shard was judged before it
        for target, streams in found.items():
            for stream, end in streams.items():
                self._keep(shard, stream, _Read(start, target, end))
        for stream, (source, target) in moving.items():
            if source == shard:
                self._keep(shard, stream, _Read(start, target))
        self._ready.add(shard)
        return True

    def notice(self, shard: int, moves: MovesAround, before: int) -> None:
        """Keeps ``before`` (the feed's position on the shard before the event it
        judges with ``moves``) for the streams that left since it last looked."""
        gone = self._links(shard).departures(self._seen.get(shard, 0))
        self._seen[shard] = self._seen.get(shard, 0) + len(gone)
        for stream in gone:
            self._keep(shard, stream, _Read(before))
        for stream, kept in self._reads.items():  # (few: the moves under way)
            read = kept.get(shard)
            if read is not None and read.target is None:
                read.target = moves.departed.get(stream)

    def _keep(self, shard: int, stream: UUID, read: _Read) -> None:
        kept = self._reads.setdefault(stream, {})
        known = kept.get(shard)
        if known is None:
            kept[shard] = read
        elif known.target is None:
            known.target, known.end = read.target, read.end

    def read(self, shard: int, stream: UUID, position: int) -> None:
        """The feed read an event at ``position`` on ``shard`` of ``stream``,
        which moved off it."""
        kept = self._reads.get(stream, {}).get(shard)
        if kept is not None:
            kept.position = max(kept.position, position)

    def positions(self, stream: UUID, taken: Mapping[int, int]) -> Mapping[int, int]:
        """The feed's positions as the rule takes them for ``stream``."""
        kept = self._reads.get(stream)
        if not kept:
            return taken
        return {**taken, **{shard: read.position for shard, read in kept.items()}}

    def prune(self, taken: Mapping[int, int], wake: Wake) -> None:
        """Forgets what no longer matters: a stream whose originals it read
        through, or whose copies it passed."""
        now = time.monotonic()
        for stream, kept in list(self._reads.items()):
            for shard, read in list(kept.items()):
                if read.target is None:
                    continue
                link = self._links(read.target)
                read.end = read.end or link.copies_end(stream, shard)
                if read.end is None:
                    if now >= read.asked + ASK_AGAIN_SECONDS:
                        read.asked = now
                        link.ask_copies_end(stream, shard, wake)
                    continue
                passed = taken.get(read.target, -1) >= read.end[0]
                if read.position >= read.end[1] or passed:
                    del kept[shard]
            if not kept:
                del self._reads[stream]

    def text_parts(self, taken: Mapping[int, int]) -> Iterator[str]:
        """``SHARD:STREAM:POSITION`` of what is kept below the feed's position
        (a feed resumed from it starts there for the others)."""
        for stream, kept in sorted(self._reads.items()):
            for shard, read in sorted(kept.items()):
                if read.position < taken.get(shard, 0):
                    yield f"{shard}:{stream.hex}:{read.position}"
