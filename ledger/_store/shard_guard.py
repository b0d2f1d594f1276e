"""The guard on each shard's events table: a user is written on its shard only.

A trigger, installed when a database becomes a shard, refuses an append

- of a stream fenced in ``ctxledger_moved_out`` (it moved to another shard: a
  process that routed it by an old cache entry is told to look again; a stream
  that came back keeps its row, inactive, so readers know it left once), or
  in ``ctxledger_moving_in`` (a move's copy arrived, the switch is to come), and
- on shard 0, of the first event of a stream that the directory (in the same
  database) does not give to shard 0: a process that opened the ledger before the
  directory existed cannot place a new user on the wrong shard.

The refusal is an SQL error with its own SQLSTATE, rolled back like any failed
append, so nothing of the refused write is stored. A move copies a stream in with
``ctxledger.copying`` set for its transaction, which the guard lets through.

``ctxledger_moved_in`` records, for each event copied in by a move, its position
here and its position on the shard it came from: readers of several shards' logs
use it to take each event once (``ledger._store.shard_moves``).
"""

from typing import Any

import psycopg
from psycopg import sql

MOVED_OUT_TABLE = "ctxledger_moved_out"
MOVED_IN_TABLE = "ctxledger_moved_in"
MOVING_IN_TABLE = "ctxledger_moving_in"
MOVED_STATE = "CLM01"
"""SQLSTATE of an append refused because the stream moved to another shard."""
UNROUTED_STATE = "CLU01"
"""SQLSTATE of a new stream's append on shard 0 that the directory gives elsewhere."""

_TABLES = (
    "CREATE TABLE IF NOT EXISTS {moved_out} ("
    " stream_id uuid PRIMARY KEY,"
    " to_shard integer NOT NULL,"
    " active boolean NOT NULL DEFAULT true,"
    " moved_at timestamptz NOT NULL DEFAULT now())",
    "CREATE TABLE IF NOT EXISTS {moved_in} ("
    " position bigint PRIMARY KEY,"
    " stream_id uuid NOT NULL,"
    " version bigint NOT NULL,"
    " from_shard integer NOT NULL,"
    " from_position bigint NOT NULL,"
    " earlier_shards integer[] NOT NULL DEFAULT '{{}}',"
    " earlier_positions bigint[] NOT NULL DEFAULT '{{}}')",
    "CREATE TABLE IF NOT EXISTS {moving_in} (stream_id uuid PRIMARY KEY)",
    "CREATE INDEX IF NOT EXISTS ctxledger_moved_in_by_stream "
    "ON {moved_in} (stream_id, version)",
)
_FUNCTION = (
    "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger "
    "LANGUAGE plpgsql AS $body$ BEGIN "
    "IF current_setting('ctxledger.copying', true) = 'on' THEN RETURN NEW; END IF; "
    "IF EXISTS (SELECT 1 FROM {moved_out} "
    "WHERE stream_id = NEW.originator_id AND active) "
    "OR EXISTS (SELECT 1 FROM {moving_in} WHERE stream_id = NEW.originator_id) THEN "
    "RAISE EXCEPTION 'stream % moved to or from another shard', NEW.originator_id "
    "USING ERRCODE = 'CLM01'; END IF; "
    "{directory_check}"
    "RETURN NEW; END $body$"
)
_DIRECTORY_CHECK = (
    "IF NEW.originator_version = 1 AND NOT EXISTS (SELECT 1 FROM {users} "
    "WHERE stream_id = NEW.originator_id AND shard_id = 0) THEN "
    "RAISE EXCEPTION 'stream % is not assigned to shard 0', NEW.originator_id "
    "USING ERRCODE = 'CLU01'; END IF; "
)
_TRIGGER = (
    "CREATE OR REPLACE TRIGGER ctxledger_shard_guard BEFORE INSERT ON {events} "
    "FOR EACH ROW EXECUTE FUNCTION {function}()"
)


def install_guard(
    connection: psycopg.Connection[Any],
    schema: str,
    events_table: str,
    *,
    directory: bool,
) -> None:
    """Creates the guard's tables, function and trigger (again: idempotent).
    ``directory``: this database holds the directory (shard 0)."""
    names = {
        "moved_out": sql.Identifier(schema, MOVED_OUT_TABLE),
        "moved_in": sql.Identifier(schema, MOVED_IN_TABLE),
        "moving_in": sql.Identifier(schema, MOVING_IN_TABLE),
        "function": sql.Identifier(schema, "ctxledger_shard_guard"),
        "events": sql.Identifier(schema, events_table),
        "users": sql.Identifier(schema, "ctxledger_shard_users"),
    }
    for statement in _TABLES:
        connection.execute(sql.SQL(statement).format(**names))
    check = sql.SQL(_DIRECTORY_CHECK if directory else "").format(**names)
    connection.execute(sql.SQL(_FUNCTION).format(directory_check=check, **names))
    connection.execute(sql.SQL(_TRIGGER).format(**names))


def refusal_of(error: BaseException) -> str | None:
    """The guard's SQLSTATE if ``error`` (or what caused it) is its refusal."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        state = getattr(current, "sqlstate", None)
        if state in (MOVED_STATE, UNROUTED_STATE):
            return str(state)
        current = current.__cause__ or current.__context__
    return None
