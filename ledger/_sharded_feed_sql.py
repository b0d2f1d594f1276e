"""The reads of a shard's move records that the sharded feeds need besides the
rule's own (``shard_copies``): where a stream's copies end, which streams have
copies past a position, and which users are being moved (the directory, in
shard 0's database). Each takes a cursor of the shard's log reader."""

from typing import Any
from uuid import UUID

from psycopg import sql

from ledger._store.shard_directory import USERS_TABLE
from ledger._store.shard_guard import MOVED_IN_TABLE

Ends = tuple[int, int]
"""Of the copies of a stream from one shard: the last one's position here, and
the position its original had there."""
Moving = dict[UUID, tuple[int, int]]
"""Streams being moved: stream -> (from shard, to shard)."""


def copies_end(cursor: Any, schema: str, stream: UUID, from_shard: int) -> Ends | None:
    """Where the copies here of ``stream`` from ``from_shard`` end (None: none)."""
    cursor.execute(
        sql.SQL(
            "SELECT max(position) AS last, max(from_position) AS came_from "
            "FROM {} WHERE stream_id = %s AND from_shard = %s"
        ).format(sql.Identifier(schema, MOVED_IN_TABLE)),
        (stream, from_shard),
    )
    row = _values(cursor.fetchone())
    return None if not row or row[0] is None else (int(row[0]), int(row[1]))


def copies_after(
    cursor: Any, schema: str, from_shard: int, after: int
) -> dict[UUID, Ends]:
    """The streams with copies here from ``from_shard`` past ``after``."""
    cursor.execute(
        sql.SQL(
            "SELECT stream_id, max(position) AS last, max(from_position) AS came_from "
            "FROM {} WHERE from_shard = %s AND position > %s GROUP BY stream_id"
        ).format(sql.Identifier(schema, MOVED_IN_TABLE)),
        (from_shard, after),
    )
    rows = [_values(row) for row in cursor.fetchall()]
    return {_uuid(s): (int(p), int(f)) for s, p, f in rows}


def moving(cursor: Any, schema: str) -> Moving:
    """The users being moved, from the directory (this must be shard 0)."""
    cursor.execute(
        sql.SQL(
            "SELECT stream_id, shard_id, moving_to FROM {} WHERE moving_to IS NOT NULL"
        ).format(sql.Identifier(schema, USERS_TABLE))
    )
    rows = [_values(row) for row in cursor.fetchall()]
    return {_uuid(s): (int(f), int(t)) for s, f, t in rows}


def spans(asked: dict[int, int], most: int) -> list[tuple[int, int]]:
    """The position windows to read for the positions asked: each from a
    position to its settled bound (at most ``most`` on), one per run of
    positions it covers."""
    found: list[tuple[int, int]] = []
    for position in sorted(asked):
        if found and position <= found[-1][1]:
            continue
        found.append((position, max(position, min(asked[position], position + most))))
    return found


def _values(row: Any) -> list[Any]:
    if row is None:
        return []
    return list(row.values()) if isinstance(row, dict) else list(row)


def _uuid(value: Any) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))
