"""How far a view's worker read the stream of a user that moved off its shard.

``taken_elsewhere`` judges a copy by the reader's position on the shard it was
copied from: past the original's position, the reader took the original. A move
deletes the originals once it is over, though, and a worker that gets there
after that passes their positions without reading them. So for each stream that
moved away from its shard a worker keeps, beside its tracking position and in the
same transaction, the position up to which it read that stream's events there:
its position when it first found the stream gone (everything before was read
while the originals were stored), raised by every original it reads after. The
rule is then given that position, on that shard, for that stream.

The rows live in the views' database, keyed by the worker's tracking key (a
view, its live or rebuilt tables, a shard).
"""

from collections.abc import Iterable, Mapping
from uuid import UUID

from projections._store import Tx

TABLE = "ctxl_moved_reads"
_COLUMNS = (
    "tracking_key {text} NOT NULL, stream_id {text} NOT NULL, "
    "position {int} NOT NULL, PRIMARY KEY (tracking_key, stream_id)"
)


def create_table(tx: Tx) -> None:
    tx.run(
        f"CREATE TABLE IF NOT EXISTS {tx.dialect.table(TABLE)} "
        f"({_COLUMNS.format(**tx.dialect.types)})"
    )


def read_through(
    tx: Tx, keys: Iterable[str], streams: Iterable[UUID]
) -> dict[tuple[str, UUID], int]:
    """The positions kept for these streams under these tracking keys."""
    wanted = [str(stream) for stream in streams]
    if not wanted:
        return {}
    rows = tx.rows(
        f"SELECT tracking_key, stream_id, position FROM {tx.dialect.table(TABLE)} "
        "WHERE tracking_key = ANY(?) AND stream_id = ANY(?)",
        (list(keys), wanted),
    )
    return {(key, UUID(stream)): int(position) for key, stream, position in rows}


def first_seen(tx: Tx, key: str, streams: Iterable[UUID], position: int) -> None:
    """Keeps ``position`` (the worker's before this batch) for the streams it
    finds moved away for the first time."""
    tx.run(
        f"INSERT INTO {tx.dialect.table(TABLE)} (tracking_key, stream_id, position) "
        "SELECT ?, moved, ? FROM unnest(CAST(? AS text[])) AS moved "
        "ON CONFLICT (tracking_key, stream_id) DO NOTHING",
        (key, position, [str(stream) for stream in streams]),
    )


def raise_to(tx: Tx, key: str, read: Mapping[UUID, int]) -> None:
    """Raises the positions kept for these streams to the ones read."""
    tx.run_many(
        f"INSERT INTO {tx.dialect.table(TABLE)} (tracking_key, stream_id, position) "
        "VALUES (?, ?, ?) ON CONFLICT (tracking_key, stream_id) DO UPDATE SET "
        f"position = GREATEST({tx.dialect.table(TABLE)}.position, excluded.position)",
        [(key, str(stream), position) for stream, position in read.items()],
    )


def forget(tx: Tx, keys: Iterable[str]) -> None:
    tx.run(
        f"DELETE FROM {tx.dialect.table(TABLE)} WHERE tracking_key = ANY(?)",
        (list(keys),),
    )


def move(tx: Tx, source: str, target: str) -> None:
    """``target`` takes ``source``'s rows (a rebuild swapped in)."""
    forget(tx, [target])
    tx.run(
        f"UPDATE {tx.dialect.table(TABLE)} SET tracking_key = ? WHERE tracking_key = ?",
        (target, source),
    )
