"""Moving a user's stream to another shard, exactly once, safe to kill at any step.

The steps, each committed before the next (``on_step`` names them):

1. ``mark``: the directory records the move (``moving_to``); writers that meet
   the fence below wait for it to end.
2. ``fence``: the source refuses the stream's appends (``ctxledger_moved_out``),
   taken under a lock that waits for appends under way, so none lands later.
3. ``copy``: events, snapshots, key rows and erasure marks go to the target in
   one transaction; each copied event is recorded in ``ctxledger_moved_in`` with
   its position on the source, so log readers take it once (``shard_copies``).
4. ``verify``: the target's chain of the user must hold and end at the source's
   head; else the copy is removed and the move undone.
5. ``switch``: the directory gives the user to the target.
6. ``clean``: after the routing caches have expired, the source's copy is
   deleted (its fence stays, so a stale route is refused, never misplaced).

A mover holds a session lock on the user in the directory's database. A writer
that finds the user moving while no mover holds the lock undoes a move cut short
before the switch (the source still holds everything); a move cut short after it
is finished by the next ``move_user`` or ``finish_departures``.
"""

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from uuid import UUID

import psycopg
from psycopg import sql

from ledger._api import ContextLedger
from ledger._audit.chain import ChainReport
from ledger._domain import validation
from ledger._domain.contexts import user_aggregate_id
from ledger._store.erasure_marks import ERASURES_TABLE
from ledger._store.failures import storage_failures
from ledger._store.keys import KEYS_TABLE
from ledger._store.postgres import PostgresBackend
from ledger._store.shard_directory import conninfo
from ledger._store.shard_guard import MOVED_IN_TABLE, MOVED_OUT_TABLE, MOVING_IN_TABLE
from ledger.errors import LedgerConfigError, LedgerCorrupted, LedgerError

if TYPE_CHECKING:
    from ledger._sharded import ShardedLedger

EVENTS = PostgresBackend.events_table
SNAPSHOTS = PostgresBackend.snapshots_table
_UUID_STREAM = ((EVENTS, "originator_id"), (SNAPSHOTS, "originator_id"))
_log = logging.getLogger(__name__)
FENCE_ATTEMPTS = 5
FENCE_LOCK_MS = 2000
FENCE_PAUSE_SECONDS = 1.0
_TEXT_STREAM = ((KEYS_TABLE, "stream_id"), (ERASURES_TABLE, "stream_id"))


@dataclass(frozen=True)
class MoveResult:
    """What ``move_user`` did."""

    user_id: str
    from_shard: int
    to_shard: int
    events: int


def move_user(
    url: str | None,
    user_id: str,
    to_url: str,
    *,
    on_step: Callable[[str], None] | None = None,
) -> MoveResult:
    """Moves ``user_id``'s stream, keys and snapshots to the shard at ``to_url``."""
    from ledger._sharded import ShardedLedger  # noqa: PLC0415 - a cycle

    user = validation.identifier("user_id", user_id)
    stream = user_aggregate_id(user)
    step = on_step or (lambda _: None)
    with ContextLedger.open(url) as ledger:
        if not isinstance(ledger, ShardedLedger):
            raise LedgerConfigError(
                "this ledger has no shards; add one with ctxledger shards add URL"
            )
        target = _shard_id(ledger, to_url)
        finish_departures(ledger)
        with _move_lock(ledger, stream, wait=True):
            _settle_cut_short(ledger, stream)
            found = ledger.directory.lookup(stream, fresh=True)
            if found is None:  # no events yet: placed there for its first write
                ledger.directory.place(stream, target)
                return MoveResult(user, target, target, 0)
            source = found.shard_id
            if source == target:
                raise LedgerConfigError(
                    f"user {user!r} is already on shard {target}; nothing to move"
                )
            events = _move(ledger, user, source, target, step)
    return MoveResult(user, source, target, events)


def _move(
    ledger: "ShardedLedger",
    user: str,
    source: int,
    target: int,
    step: Callable[[str], None],
) -> int:
    directory = ledger.directory
    stream = user_aggregate_id(user)
    directory.set_moving(stream, source, target)
    step("mark")
    try:
        with _shard(ledger, source) as (conn, schema):
            _fence(conn, schema, stream, target)
    except BaseException:
        directory.set_moving(stream, source, None)
        raise
    step("fence")
    before = ledger.shard(source).verify_chain(user)
    if not before.holds:
        _undo(ledger, stream, source, target)
        raise LedgerCorrupted(
            user, f"its chain on shard {source} does not verify, so it was not moved"
        )
    with _shard(ledger, source) as (src, src_schema):
        rows = _stream_rows(src, src_schema, stream)
    with _shard(ledger, target) as (dst, dst_schema):
        copied = _copy_in(dst, dst_schema, stream, source, rows)
    step("copy")
    after = ledger.shard(target).verify_chain(user)
    if not after.holds or _heads(after) != _heads(before):
        _undo(ledger, stream, source, target)
        raise LedgerCorrupted(
            user, f"its copy on shard {target} does not verify; the move was undone"
        )
    step("verify")
    _arrive(ledger, stream, target)
    step("switch")
    time.sleep(directory.cache_seconds)  # stale routes now read the directory
    with _shard(ledger, source) as (conn, schema):
        _delete_stream(conn, schema, stream)
    step("clean")
    return copied


def recover_move(ledger: "ShardedLedger", stream: UUID) -> bool:
    """Ends a move of ``stream`` cut short before its switch, if its mover is
    gone: True when it did (or the move is over); False while a mover works."""
    try:
        with _move_lock(ledger, stream, wait=False):
            _settle_cut_short(ledger, stream)
    except _Busy:
        return False
    return True


def finish_departures(ledger: "ShardedLedger", stream: UUID | None = None) -> int:
    """Deletes what moves cut short after their switch left on their source
    shards (streams the directory gives elsewhere): all, or ``stream``'s; how
    many copies it deleted. A shard it cannot reach is left for the next call."""
    finished = 0
    for shard_id in ledger.shard_ids():
        try:
            finished += _finish_on(ledger, shard_id, stream)
        except (LedgerError, psycopg.Error) as error:
            _log.warning(
                "left moved streams on shard %s for later: %s", shard_id, error
            )
    return finished


def _finish_on(ledger: "ShardedLedger", shard_id: int, stream: UUID | None) -> int:
    finished = 0
    with _shard(ledger, shard_id) as (conn, schema):
        for departed in _departed_with_events(conn, schema, stream):
            found = ledger.directory.lookup(departed, fresh=True)
            if found is not None and found.shard_id != shard_id:
                _delete_stream(conn, schema, departed)
                finished += 1
    return finished


def _heads(report: ChainReport) -> list[tuple[int, int, str]]:
    return [(c.events, c.head_version, c.head_hash) for c in report.users]


class _Busy(Exception):
    """Another mover holds the user's lock."""


@contextmanager
def _move_lock(ledger: "ShardedLedger", stream: UUID, *, wait: bool) -> Iterator[None]:
    key = f"ctxledger move {stream}"
    with (
        storage_failures(ledger.storage),
        psycopg.connect(**conninfo(ledger.storage), autocommit=True) as connection,
    ):
        if wait:
            connection.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
        else:
            row = connection.execute(
                "SELECT pg_try_advisory_lock(hashtext(%s))", (key,)
            ).fetchone()
            if not (row and row[0]):
                raise _Busy
        yield  # closing the connection releases the lock


def _settle_cut_short(ledger: "ShardedLedger", stream: UUID) -> None:
    """Ends a move whose mover died: forward when the target holds the whole
    copy (it is written in one transaction, and readers may have taken it),
    else back (the source still holds everything)."""
    found = ledger.directory.lookup(stream, fresh=True)
    if found is None or found.moving_to is None:
        return
    source, target = found.shard_id, found.moving_to
    with _shard(ledger, target) as (conn, schema):
        arrived = _arriving(conn, schema, stream)
        # Lifted but not switched: the copy, with no fence of an earlier stay.
        lifted = not arrived and not _fenced(conn, schema, stream)
    copied = _count(ledger, target, stream)
    if arrived or (lifted and copied and copied >= _count(ledger, source, stream)):
        _arrive(ledger, stream, target)
    else:  # the copy is one transaction: here there is none
        _undo(ledger, stream, source, target)


def _arrive(ledger: "ShardedLedger", stream: UUID, target: int) -> None:
    """The target takes the stream's appends, then the directory gives it the
    stream (a mover cut short between the two is settled forward: the target
    holds the whole copy, and maybe appends after it)."""
    with _shard(ledger, target) as (conn, schema):
        _unfence(conn, schema, MOVING_IN_TABLE, stream)
    ledger.directory.switch(stream, target)


def _arriving(conn: psycopg.Connection[Any], schema: str, stream: UUID) -> bool:
    """Whether a move's copy of the stream arrived here and awaits its switch."""
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE stream_id = %s").format(
            sql.Identifier(schema, MOVING_IN_TABLE)
        ),
        (stream,),
    ).fetchone()
    return bool(row and row[0])


def _fenced(conn: psycopg.Connection[Any], schema: str, stream: UUID) -> bool:
    """Whether the stream is fenced here because it moved away."""
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE stream_id = %s AND active").format(
            sql.Identifier(schema, MOVED_OUT_TABLE)
        ),
        (stream,),
    ).fetchone()
    return bool(row and row[0])


def _count(ledger: "ShardedLedger", shard_id: int, stream: UUID) -> int:
    with _shard(ledger, shard_id) as (conn, schema):
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE originator_id = %s").format(
                sql.Identifier(schema, EVENTS)
            ),
            (stream,),
        ).fetchone()
    return int(row[0]) if row else 0


def _undo(ledger: "ShardedLedger", stream: UUID, source: int, target: int) -> None:
    """The source keeps the user: the target's copy goes, then the fence."""
    with _shard(ledger, target) as (conn, schema):
        _delete_stream(conn, schema, stream)
        _unfence(conn, schema, MOVING_IN_TABLE, stream)
    with _shard(ledger, source) as (conn, schema):
        _stay(conn, schema, stream)
    ledger.directory.set_moving(stream, source, None)


def _stay(conn: psycopg.Connection[Any], schema: str, stream: UUID) -> None:
    """Lifts a shard's fence of the stream; the row stays, inactive, so readers
    of this log know the stream left it once (``shard_copies``)."""
    conn.execute(
        sql.SQL("UPDATE {} SET active = false WHERE stream_id = %s").format(
            sql.Identifier(schema, MOVED_OUT_TABLE)
        ),
        (stream,),
    )


def _unfence(
    conn: psycopg.Connection[Any], schema: str, table: str, stream: UUID
) -> None:
    conn.execute(
        sql.SQL("DELETE FROM {} WHERE stream_id = %s").format(
            sql.Identifier(schema, table)
        ),
        (stream,),
    )


@contextmanager
def _shard(
    ledger: "ShardedLedger", shard_id: int
) -> Iterator[tuple[psycopg.Connection[Any], str]]:
    connections = ledger.connections(shard_id)
    with connections.connection() as connection:
        yield connection, connections.storage.settings["POSTGRES_SCHEMA"]


def _fence(
    conn: psycopg.Connection[Any], schema: str, stream: UUID, target: int
) -> None:
    for attempt in range(FENCE_ATTEMPTS):
        try:
            _fence_once(conn, schema, stream, target)
        except psycopg.errors.LockNotAvailable:
            if attempt == FENCE_ATTEMPTS - 1:
                raise
            time.sleep(FENCE_PAUSE_SECONDS * (attempt + 1))
        else:
            return


def _fence_once(
    conn: psycopg.Connection[Any], schema: str, stream: UUID, target: int
) -> None:
    with conn.transaction():
        # Waits for the appends under way; later ones see the fence. Appends
        # queue behind the lock while it waits, so it waits briefly (a VACUUM
        # may hold a conflicting lock for long) and tries again later.
        conn.execute(f"SET LOCAL lock_timeout = '{FENCE_LOCK_MS}ms'")
        conn.execute(
            sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(
                sql.Identifier(schema, EVENTS)
            )
        )
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (stream_id, to_shard) VALUES (%s, %s) "
                "ON CONFLICT (stream_id) DO UPDATE "
                "SET to_shard = EXCLUDED.to_shard, active = true"
            ).format(sql.Identifier(schema, MOVED_OUT_TABLE)),
            (stream, target),
        )


Rows = dict[str, tuple[list[str], list[tuple[Any, ...]]]]


def _stream_rows(conn: psycopg.Connection[Any], schema: str, stream: UUID) -> Rows:
    """Every row of the stream in the tables a move carries, by table."""
    rows: Rows = {}
    for table, column, key in _tables(stream):
        cursor = conn.execute(
            sql.SQL("SELECT * FROM {} WHERE {} = %s").format(
                sql.Identifier(schema, table), sql.Identifier(column)
            ),
            (key,),
        )
        names = [c.name for c in cursor.description or ()]
        rows[table] = (names, cursor.fetchall())
    names, events = rows[EVENTS]
    version = names.index("originator_version")
    rows[EVENTS] = (names, sorted(events, key=lambda row: int(row[version])))
    cursor = conn.execute(
        sql.SQL(
            "SELECT position, from_shard, from_position, earlier_shards, "
            "earlier_positions FROM {} WHERE stream_id = %s"
        ).format(sql.Identifier(schema, MOVED_IN_TABLE)),
        (stream,),
    )
    rows[MOVED_IN_TABLE] = (["position"], cursor.fetchall())
    return rows


def _earlier(rows: Rows) -> dict[int, tuple[list[int], list[int]]]:
    """For each of the source's records that is itself a copy, every place the
    event had before the source, oldest first."""
    places = {}
    for position, shard, at, shards, positions in rows[MOVED_IN_TABLE][1]:
        places[int(position)] = (
            [*map(int, shards), int(shard)],
            [*map(int, positions), int(at)],
        )
    return places


def _tables(stream: UUID) -> Iterator[tuple[str, str, Any]]:
    for table, column in _UUID_STREAM:
        yield table, column, stream
    for table, column in _TEXT_STREAM:  # their rows name the stream in hex
        yield table, column, stream.hex


def _copy_in(
    conn: psycopg.Connection[Any],
    schema: str,
    stream: UUID,
    source: int,
    rows: Rows,
) -> int:
    """Writes the rows on the target in one transaction; how many events. A copy
    that a cut-short move already committed (its arrival fence is there) is kept
    as it is; anything else of the stream there is what an earlier stay left."""
    names, events = rows[EVENTS]
    with conn.transaction():
        conn.execute("SET LOCAL ctxledger.copying = 'on'")
        conn.execute("SELECT pg_current_xact_id()")  # before any position: gap-free
        if _arriving(conn, schema, stream):
            return len(events)
        # No appends here until the directory gives the stream to this shard.
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (stream_id) VALUES (%s) ON CONFLICT DO NOTHING"
            ).format(sql.Identifier(schema, MOVING_IN_TABLE)),
            (stream,),
        )
        _stay(conn, schema, stream)
        # What an earlier stay left (a copy a cut-short move left, a key a stale
        # route made, copies' records) goes first.
        _delete_stream(conn, schema, stream)
        earlier = _earlier(rows)
        for row in events:
            event = dict(zip(names, row, strict=True))
            before = earlier.get(int(event["notification_id"]), ([], []))
            _copy_event(conn, schema, source, event, before)
        for table in (SNAPSHOTS, KEYS_TABLE, ERASURES_TABLE):
            _insert_rows(conn, schema, table, *rows[table])
    return len(events)


def _copy_event(
    conn: psycopg.Connection[Any],
    schema: str,
    source: int,
    event: dict[str, Any],
    earlier: tuple[list[int], list[int]],
) -> None:
    found = conn.execute(
        sql.SQL(
            "INSERT INTO {} (originator_id, originator_version, topic, state) "
            "VALUES (%s, %s, %s, %s) RETURNING notification_id"
        ).format(sql.Identifier(schema, EVENTS)),
        (
            event["originator_id"],
            event["originator_version"],
            event["topic"],
            event["state"],
        ),
    ).fetchone()
    if found is None:
        raise LedgerCorrupted(
            str(event["originator_id"]), "a copied event got no position"
        )
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (position, stream_id, version, from_shard, "
            "from_position, earlier_shards, earlier_positions) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s)"
        ).format(sql.Identifier(schema, MOVED_IN_TABLE)),
        (
            found[0],
            event["originator_id"],
            event["originator_version"],
            source,
            event["notification_id"],
            *earlier,
        ),
    )


def _insert_rows(
    conn: psycopg.Connection[Any],
    schema: str,
    table: str,
    names: list[str],
    rows: list[tuple[Any, ...]],
) -> None:
    if not rows:
        return
    statement = sql.SQL(
        "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT DO NOTHING"
    ).format(
        sql.Identifier(schema, table),
        sql.SQL(", ").join(map(sql.Identifier, names)),
        sql.SQL(", ").join(sql.Placeholder() * len(names)),
    )
    with conn.cursor() as cursor:
        cursor.executemany(statement, rows)


def _delete_stream(conn: psycopg.Connection[Any], schema: str, stream: UUID) -> None:
    """Deletes the stream's rows (events, snapshots, keys, marks) in one
    transaction; its fence, if any, stays."""
    with conn.transaction():
        for table, column, key in _tables(stream):
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE {} = %s").format(
                    sql.Identifier(schema, table), sql.Identifier(column)
                ),
                (key,),
            )
        _unfence(conn, schema, MOVED_IN_TABLE, stream)  # records of gone rows


def _departed_with_events(
    conn: psycopg.Connection[Any], schema: str, stream: UUID | None
) -> list[UUID]:
    cursor = conn.execute(
        sql.SQL(
            "SELECT o.stream_id FROM {moved_out} o WHERE EXISTS "
            "(SELECT 1 FROM {events} e WHERE e.originator_id = o.stream_id) "
            "AND o.active AND (%s::uuid IS NULL OR o.stream_id = %s::uuid)"
        ).format(
            moved_out=sql.Identifier(schema, MOVED_OUT_TABLE),
            events=sql.Identifier(schema, EVENTS),
        ),
        (stream, stream),
    )
    return [UUID(str(row[0])) for row in cursor.fetchall()]


def _shard_id(ledger: "ShardedLedger", to_url: str) -> int:
    return ledger.directory.shard_named(to_url)
