"""The operator's commands on shards: add, list, drain and reopen.

Each takes the ledger's URL (the database that holds, or will hold, the directory:
shard 0) and the shard's URL. A shard URL's password is never stored; see
``ledger._store.shard_directory``.
"""

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ledger._api import ContextLedger
from ledger._store.postgres import PostgresBackend
from ledger._store.shard_directory import (
    DRAINING,
    OPEN,
    Shard,
    ShardDirectory,
    connected,
    identity_of,
    stored_url,
)
from ledger._store.shard_guard import MOVED_IN_TABLE, install_guard
from ledger._store.urls import Storage, resolve_url, shown_url, storage_for
from ledger.errors import LedgerConfigError, LedgerError

UNREACHABLE = "unreachable"


@dataclass(frozen=True)
class ShardFigures:
    """A shard as ``ctxledger shards list`` shows it."""

    shard_id: int
    url: str
    state: str
    """``open``, ``draining``, or ``unreachable`` when it could not be read."""
    users: int
    events: int | None
    """Events stored there now; None when unreachable."""


def add_shard(url: str | None, shard_url: str) -> Shard:
    """Registers the empty PostgreSQL database at ``shard_url`` as a new shard of
    the ledger at ``url`` (set up there first); the first one makes the directory."""
    ledger_url = _postgres_url(url)
    stored_url(shard_url)  # a PostgreSQL URL, or LedgerConfigError
    ContextLedger.open(ledger_url).close()  # shard 0's tables exist
    if identity_of(shard_url) == identity_of(ledger_url):
        raise LedgerConfigError(
            f"{shown_url(shard_url)} is the ledger's own database (shard 0); "
            "add another database"
        )
    directory = ShardDirectory(storage_for(ledger_url), ledger_url)
    try:
        identity = identity_of(shard_url)
        for shard_id, known in directory.identities():
            if known == identity:
                raise LedgerConfigError(
                    f"{shown_url(shard_url)} is already shard {shard_id}; "
                    "ctxledger shards list shows every shard"
                )
        shard_storage = storage_for(shard_url)
        with connected(shard_storage) as connection:
            guarded = _guarded(connection, shard_storage)
        if not guarded:  # else an add cut short after installing the guard
            ContextLedger.open(shard_url).close()  # the ledger's tables there
        with connected(shard_storage) as connection:
            events = _stored(connection, shard_storage)[1]
        if events:
            raise LedgerConfigError(
                f"{shown_url(shard_url)} already holds events; a new shard "
                "must be an empty database or schema"
            )
        _guard(shard_url)
        return directory.add(shard_url, PostgresBackend.events_table, identity)
    finally:
        directory.close()


def list_shards(url: str | None) -> list[ShardFigures]:
    """Every shard with its users, events and state (a database without a
    directory is shard 0 alone, its users counted from its events)."""
    from ledger._sharded import ShardedLedger  # noqa: PLC0415 - a cycle

    ledger_url = _postgres_url(url)
    with ContextLedger.open(ledger_url, create=False) as ledger:
        if not isinstance(ledger, ShardedLedger):
            with connected(ledger.storage) as connection:
                users, events = _stored(connection, ledger.storage)
            return [ShardFigures(0, stored_url(ledger_url), OPEN, users, events)]
        figures = []
        for shard in ledger.shards():
            try:
                connections = ledger.connections(shard.shard_id)
                with connections.connection() as connection:
                    _, events = _stored(connection, connections.storage)
                figures.append(
                    ShardFigures(
                        shard.shard_id, shard.url, shard.state, shard.users, events
                    )
                )
            except (LedgerError, psycopg.Error):
                figures.append(
                    ShardFigures(
                        shard.shard_id, shard.url, UNREACHABLE, shard.users, None
                    )
                )
        return figures


def _guarded(connection: psycopg.Connection[Any], storage: Storage) -> bool:
    """Whether a shard's guard is in the database (an add that was cut short)."""
    schema = storage.settings["POSTGRES_SCHEMA"]
    row = connection.execute(
        "SELECT to_regclass(%s) IS NOT NULL", (f'"{schema}"."{MOVED_IN_TABLE}"',)
    ).fetchone()
    return bool(row and row[0])


def _stored(connection: psycopg.Connection[Any], storage: Storage) -> tuple[int, int]:
    """The streams and events stored in a database."""
    events = sql.Identifier(
        storage.settings["POSTGRES_SCHEMA"], PostgresBackend.events_table
    )
    row = connection.execute(
        sql.SQL("SELECT count(DISTINCT originator_id), count(*) FROM {}").format(events)
    ).fetchone()
    return (int(row[0]), int(row[1])) if row else (0, 0)


def drain_shard(url: str | None, shard_url: str, *, reopen: bool = False) -> Shard:
    """Stops new users going to the shard (``reopen``: lets them go there again)."""
    ledger_url = _postgres_url(url)
    directory = ShardDirectory(storage_for(ledger_url), ledger_url)
    try:
        if not directory.exists():
            raise LedgerConfigError(
                "this ledger has no shards yet; add one with ctxledger shards add URL"
            )
        return directory.set_state(
            directory.shard_named(shard_url), OPEN if reopen else DRAINING
        )
    finally:
        directory.close()


def _guard(shard_url: str) -> None:
    storage = storage_for(shard_url)
    with connected(storage) as connection, connection.transaction():
        install_guard(
            connection,
            storage.settings["POSTGRES_SCHEMA"],
            PostgresBackend.events_table,
            directory=False,
        )


def _postgres_url(url: str | None) -> str:
    resolved = resolve_url(url)
    if storage_for(resolved).kind != "postgres":
        raise LedgerConfigError(
            f"shards need a PostgreSQL ledger; {shown_url(resolved)} is not one "
            "(SQLite and memory:// keep one database)"
        )
    return resolved
