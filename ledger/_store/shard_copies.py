"""Each event once across shards, when a move has put it in two logs.

Moving a user copies its stream to the target shard (each copied event gets a new
position there, recorded in the target's ``ctxledger_moved_in`` with the position
it had on the source) and then deletes it from the source, after fencing the
source (``ctxledger_moved_out``). A reader of several logs that keeps one position
per shard (a view's tracking positions, a change feed's position) takes a record
unless it has already taken the same event from the other log:

- a copy, made of the event at ``from_position`` on ``from_shard``, was taken if
  the reader's position on that shard has reached ``from_position``;
- an original on a shard the stream moved away from was taken if its copy exists
  and the reader's position on the target has reached the copy's position.

Both are decided from the reader's own positions, so a reader that resumes from
stored positions decides the same. For a stream that moved off a shard, the
position on that shard must be how far the reader *read that stream* there: a
move deletes the originals when it ends, and a reader that gets there later
passes their positions without reading them (the views keep it in
``projections._moved_reads``, the feeds in ``ledger._sharded_feed_reads``).
Two readers that share positions (a view's workers of two shards) must decide
one stream at a time (a view takes a lock per moved stream; see
``projections``).
"""

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from psycopg import sql

from ledger._store.shard_guard import MOVED_IN_TABLE, MOVED_OUT_TABLE


@dataclass(frozen=True)
class Copy:
    """A record that a move copied in: where the event stood before."""

    from_shard: int
    from_position: int
    earlier: tuple[tuple[int, int], ...] = ()
    """Where it stood before that, oldest first, when it was a copy there too (a
    user moved A -> B -> A): (shard, position) of each earlier copy."""

    @property
    def places(self) -> tuple[tuple[int, int], ...]:
        """Every (shard, position) the event had before this copy, oldest first."""
        return (*self.earlier, (self.from_shard, self.from_position))

    @property
    def first(self) -> tuple[int, int]:
        """Where the event was first stored: its identity across moves."""
        return self.places[0]


@dataclass(frozen=True)
class MovesAround:
    """What a reader needs about moves to judge one page of one shard's log."""

    copies: Mapping[int, Copy]
    """The page's records that are copies, by position."""
    departed: Mapping[UUID, int]
    """Streams that moved away from this shard, with the shard they went to."""


NO_MOVES = MovesAround({}, {})

CopyPosition = Callable[[int, UUID, int], int | None]
"""(target shard, stream, version) -> the copy's position there, or None."""


def moves_around(cursor: Any, schema: str, first: int, last: int) -> MovesAround:
    """The copies among positions ``first``..``last`` of this shard's log, and the
    streams that moved away; empty for a database that is no shard."""
    if not _has_guard(cursor, schema):
        return NO_MOVES
    cursor.execute(
        sql.SQL(
            "SELECT position, from_shard, from_position, earlier_shards, "
            "earlier_positions FROM {} WHERE position BETWEEN %s AND %s"
        ).format(sql.Identifier(schema, MOVED_IN_TABLE)),
        (first, last),
    )
    copies = {
        int(p): Copy(int(s), int(f), tuple(zip(es or (), ep or (), strict=True)))
        for p, s, f, es, ep in _rows(cursor)
    }
    cursor.execute(
        sql.SQL("SELECT stream_id, to_shard FROM {}").format(
            sql.Identifier(schema, MOVED_OUT_TABLE)
        )
    )
    departed = {_uuid(s): int(t) for s, t in _rows(cursor)}
    return MovesAround(copies, departed)


def copy_position(cursor: Any, schema: str, stream: UUID, version: int) -> int | None:
    """The position of the copy of ``stream``'s event ``version`` on this shard."""
    if not _has_guard(cursor, schema):
        return None
    cursor.execute(
        sql.SQL(
            "SELECT max(position) FROM {} WHERE stream_id = %s AND version = %s"
        ).format(sql.Identifier(schema, MOVED_IN_TABLE)),
        (stream, version),
    )
    row = cursor.fetchone()
    value = row[0] if not isinstance(row, dict) else next(iter(row.values()))
    return None if value is None else int(value)


def taken_elsewhere(
    position: int,
    stream: UUID,
    version: int,
    *,
    moves: MovesAround,
    positions: Mapping[int, int],
    copy_at: CopyPosition,
) -> bool:
    """Whether a reader at ``positions`` (shard -> position read through) has
    already taken this record's event from another shard's log."""
    copy = moves.copies.get(position)
    if copy is not None:  # taken wherever the reader read it before
        return any(positions.get(at, 0) >= where for at, where in copy.places)
    target = moves.departed.get(stream)
    if target is None:
        return False
    copied = copy_at(target, stream, version)
    return copied is not None and positions.get(target, 0) >= copied


def _has_guard(cursor: Any, schema: str) -> bool:
    cursor.execute(
        "SELECT to_regclass(%s) IS NOT NULL",
        (f'"{schema}"."{MOVED_IN_TABLE}"',),
    )
    row = cursor.fetchone()
    value = row[0] if not isinstance(row, dict) else next(iter(row.values()))
    return bool(value)


def _rows(cursor: Any) -> Iterable[tuple[Any, ...]]:
    for row in cursor.fetchall():
        yield tuple(row.values()) if isinstance(row, dict) else tuple(row)


def _uuid(value: Any) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))
