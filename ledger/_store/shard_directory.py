"""The shard directory: which PostgreSQL database holds each user's stream.

A deployment that outgrows one database registers more with ``ctxledger shards
add URL``. The directory lives in the first database (shard 0), in the ledger's
schema, as two tables: the shards (URL without its password, and whether new users
may go there) and the assignment of each user's stream to one shard. A user is
assigned on first write by rendezvous hashing over the shards open to new users,
and the row is the authority: every process reads the same row, so adding a shard
moves no existing user. The users shard 0 held when the directory was made stay
there (they are assigned to it in the same transaction).

Every shard also carries a guard on its events table (``shard_guard``): an append
of a stream that moved away, or (on shard 0) the first event of a stream the
directory gives to no shard or to another, is refused by the database itself. So a
process that routes by an old cache entry, or that opened the ledger before the
directory existed, can never write a user to the wrong shard.
"""

import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote
from uuid import UUID

import psycopg
from psycopg import sql
from psycopg_pool import ConnectionPool

from ledger import _metrics as metrics
from ledger._store.failures import storage_failures
from ledger._store.shard_guard import install_guard
from ledger._store.urls import Storage, shown_url, storage_for
from ledger.errors import LedgerConfigError, StorageUnavailable

SHARDS_TABLE = "ctxledger_shards"
USERS_TABLE = "ctxledger_shard_users"
IDENTITY_TABLE = "ctxledger_identity"
OPEN, DRAINING = "open", "draining"
CACHE_SECONDS = 5.0
"""How long a process trusts an assignment it read (a move's writes are fenced by
the source shard's guard, so this bounds only how stale a read can be)."""
CACHE_ENTRIES = 100_000
MOST_CONNECTIONS = 4
"""Connections a process opens at most to one database for routing, moves and
the shards commands (apart from the ledger's own pools)."""

_CREATE = (
    "CREATE TABLE IF NOT EXISTS {shards} ("
    " shard_id integer PRIMARY KEY,"
    " url text NOT NULL UNIQUE,"
    " state text NOT NULL CHECK (state IN ('open', 'draining')),"
    " identity uuid NOT NULL UNIQUE,"
    " added_at timestamptz NOT NULL DEFAULT now())",
    "CREATE TABLE IF NOT EXISTS {users} ("
    " stream_id uuid PRIMARY KEY,"
    " shard_id integer NOT NULL REFERENCES {shards},"
    " moving_to integer REFERENCES {shards})",
    "CREATE INDEX IF NOT EXISTS {users_by_shard} ON {users} (shard_id)",
)


@dataclass(frozen=True)
class Shard:
    """One database of a sharded ledger, as the directory records it."""

    shard_id: int
    url: str
    """Without a password: the connection takes it from the caller's URL (same
    user and host), PGPASSWORD or a pgpass file."""
    state: str
    users: int


@dataclass(frozen=True)
class Assignment:
    shard_id: int
    moving_to: int | None


def shard_score(shard_id: int, stream: UUID) -> int:
    """The rendezvous weight of a shard for a stream: the highest open one wins."""
    digest = hashlib.blake2b(f"{shard_id}:{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous(shard_ids: list[int], stream: UUID) -> int:
    return max(shard_ids, key=lambda shard: (shard_score(shard, stream), -shard))


class ShardDirectory:
    """The directory in shard 0's database, with this process's cache of it."""

    def __init__(self, storage: Storage, url: str) -> None:
        settings = storage.settings
        self.storage = storage
        self.url = url
        self.schema = settings["POSTGRES_SCHEMA"]
        self.connections = Connections(storage)
        """A few connections of its own: routing never takes one that the
        shard's commands need."""
        self._lock = threading.Lock()
        self._cache: OrderedDict[UUID, tuple[int, float]] = OrderedDict()
        self._open_shards: tuple[list[int], float] | None = None
        self.cache_seconds = float(
            os.environ.get("CTXLEDGER_SHARD_CACHE_SECONDS") or CACHE_SECONDS
        )
        self.reads = 0
        """Directory queries this process made for routing (for tests and metrics)."""

    def connection(self) -> AbstractContextManager[psycopg.Connection[Any]]:
        return self.connections.connection()

    def close(self) -> None:
        self.connections.close()

    def table(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.schema, name)

    def exists(self) -> bool:
        with self.connection() as connection:
            row = connection.execute(
                "SELECT to_regclass(%s) IS NOT NULL", (directory_table(self.storage),)
            ).fetchone()
        return bool(row and row[0])

    # Reading.

    def shards(self) -> list[Shard]:
        statement = sql.SQL(
            "SELECT s.shard_id, s.url, s.state,"
            " (SELECT count(*) FROM {users} u WHERE u.shard_id = s.shard_id)"
            " FROM {shards} s ORDER BY s.shard_id"
        ).format(users=self.table(USERS_TABLE), shards=self.table(SHARDS_TABLE))
        with self.connection() as connection:
            rows = connection.execute(statement).fetchall()
        return [Shard(int(i), str(u), str(s), int(n)) for i, u, s, n in rows]

    def lookup(self, stream: UUID, *, fresh: bool = False) -> Assignment | None:
        """The stream's shard (cached for ``cache_seconds``), None if unassigned."""
        if not fresh:
            with self._lock:
                cached = self._cache.get(stream)
            if cached is not None and cached[1] > time.monotonic():
                return Assignment(cached[0], None)
        statement = sql.SQL(
            "SELECT shard_id, moving_to FROM {users} WHERE stream_id = %s"
        ).format(users=self.table(USERS_TABLE))
        with self.connection() as connection:
            row = connection.execute(statement, (stream,)).fetchone()
        self.reads += 1
        metrics.count_directory_read()
        if row is None:
            return None
        assignment = Assignment(int(row[0]), None if row[1] is None else int(row[1]))
        self._remember(stream, assignment.shard_id)
        return assignment

    def assign(self, stream: UUID) -> Assignment:
        """The stream's shard, assigning it by rendezvous over the open shards
        when it has none (every process gets the row the first one wrote)."""
        known = self.lookup(stream)
        if known is not None:
            return known
        candidate = rendezvous(self._open_shard_ids(), stream)
        statement = sql.SQL(
            "INSERT INTO {users} (stream_id, shard_id) VALUES (%s, %s)"
            " ON CONFLICT (stream_id) DO NOTHING"
        ).format(users=self.table(USERS_TABLE))
        with self.connection() as connection:
            connection.execute(statement, (stream, candidate))
        assigned = self.lookup(stream, fresh=True)
        if assigned is None:  # only a directory edited by hand gets here
            raise LedgerConfigError(
                f"the shard directory lost the assignment of stream {stream}; "
                "check its table for manual changes"
            )
        return assigned

    def moving(self) -> list[UUID]:
        """The streams being moved (or whose move was cut short)."""
        statement = sql.SQL(
            "SELECT stream_id FROM {users} WHERE moving_to IS NOT NULL"
        ).format(users=self.table(USERS_TABLE))
        with self.connection() as connection:
            return [UUID(str(row[0])) for row in connection.execute(statement)]

    def place(self, stream: UUID, shard_id: int) -> int:
        """The stream's shard; a stream with none is placed on ``shard_id``."""
        statement = sql.SQL(
            "INSERT INTO {users} (stream_id, shard_id) VALUES (%s, %s)"
            " ON CONFLICT (stream_id) DO NOTHING"
        ).format(users=self.table(USERS_TABLE))
        with self.connection() as connection:
            connection.execute(statement, (stream, shard_id))
        found = self.lookup(stream, fresh=True)
        return shard_id if found is None else found.shard_id

    def set_moving(self, stream: UUID, shard_id: int, to: int | None) -> None:
        """Records (or with ``to=None`` clears) a move of the stream off its shard."""
        self._update(
            "UPDATE {users} SET moving_to = %s WHERE stream_id = %s AND shard_id = %s",
            (to, stream, shard_id),
            stream,
        )

    def switch(self, stream: UUID, to: int) -> None:
        """Gives the moving stream to its target: the move's point of no return."""
        self._update(
            "UPDATE {users} SET shard_id = moving_to, moving_to = NULL"
            " WHERE stream_id = %s AND moving_to = %s",
            (stream, to),
            stream,
        )

    def _update(self, statement: str, params: tuple[Any, ...], stream: UUID) -> None:
        query = sql.SQL(statement).format(users=self.table(USERS_TABLE))
        with self.connection() as connection:
            changed = connection.execute(query, params).rowcount
        if changed != 1:
            raise LedgerConfigError(
                "the shard directory changed under a move (another mover, or a "
                "manual edit); run ctxledger shards move again"
            )
        self.forget_cached(stream)

    def forget_cached(self, stream: UUID) -> None:
        with self._lock:
            self._cache.pop(stream, None)

    def _remember(self, stream: UUID, shard_id: int) -> None:
        with self._lock:
            self._cache[stream] = (shard_id, time.monotonic() + self.cache_seconds)
            self._cache.move_to_end(stream)
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)

    def _open_shard_ids(self) -> list[int]:
        now = time.monotonic()
        if self._open_shards is not None and self._open_shards[1] > now:
            return self._open_shards[0]
        statement = sql.SQL(
            "SELECT shard_id FROM {shards} WHERE state = 'open' ORDER BY shard_id"
        ).format(shards=self.table(SHARDS_TABLE))
        with self.connection() as connection:
            ids = [int(row[0]) for row in connection.execute(statement)]
        self.reads += 1
        metrics.count_directory_read()
        if not ids:
            raise LedgerConfigError(
                "every shard is draining, so no shard takes new users; add one "
                "(ctxledger shards add URL) or reopen one (ctxledger shards open URL)"
            )
        self._open_shards = (ids, now + self.cache_seconds)
        return ids

    # Changing (the CLI's ``shards`` commands).

    def create(self, connection: psycopg.Connection[Any]) -> None:
        names = {
            "shards": self.table(SHARDS_TABLE),
            "users": self.table(USERS_TABLE),
            "users_by_shard": sql.Identifier(f"{USERS_TABLE}_by_shard"),
        }
        for statement in _CREATE:
            connection.execute(sql.SQL(statement).format(**names))

    def add(self, url: str, events_table: str, identity: UUID) -> Shard:
        """Registers another database (set up by the caller; ``identity`` is its
        ``database_identity``) as a new shard; the first call makes the directory
        and assigns shard 0's users to it."""
        public = stored_url(url)
        with self.connection() as connection, connection.transaction():
            connection.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))",
                (f"ctxledger shards {self.schema}",),
            )
            self.create(connection)
            shards = self._rows(connection)
            if not shards:
                self._make_shard_zero(connection, events_table)
                shards = self._rows(connection)
            for shard_id, known in shards:
                if known == identity:  # the same database, however it is named
                    raise LedgerConfigError(
                        f"{shown_url(url)} is already shard {shard_id}; "
                        "ctxledger shards list shows every shard"
                    )
            new_id = max(shard_id for shard_id, _ in shards) + 1
            connection.execute(
                sql.SQL(
                    "INSERT INTO {shards} (shard_id, url, state, identity) "
                    "VALUES (%s, %s, %s, %s)"
                ).format(shards=self.table(SHARDS_TABLE)),
                (new_id, public, OPEN, identity),
            )
        self._open_shards = None
        return Shard(new_id, public, OPEN, 0)

    def _make_shard_zero(
        self, connection: psycopg.Connection[Any], events_table: str
    ) -> None:
        connection.execute(
            sql.SQL(
                "INSERT INTO {shards} (shard_id, url, state, identity) "
                "VALUES (0, %s, %s, %s)"
            ).format(shards=self.table(SHARDS_TABLE)),
            (stored_url(self.url), OPEN, database_identity(connection, self.schema)),
        )
        # The guard first: its trigger takes the events table's lock, so no
        # append runs between assigning shard 0's users and guarding its table.
        install_guard(connection, self.schema, events_table, directory=True)
        connection.execute(
            sql.SQL(
                "INSERT INTO {users} (stream_id, shard_id) "
                "SELECT DISTINCT originator_id, 0 FROM {events} "
                "ON CONFLICT (stream_id) DO NOTHING"
            ).format(users=self.table(USERS_TABLE), events=self.table(events_table))
        )

    def identities(self) -> list[tuple[int, UUID]]:
        """Each shard's id and database identity; none before the first add."""
        if not self.exists():
            return []
        with self.connection() as connection:
            return self._rows(connection)

    def shard_named(self, url: str) -> int:
        """The id of the shard at ``url``: by its URL (so a shard that is down can
        be named), else by its database identity (another host name or alias)."""
        public = stored_url(url)
        for shard in self.shards():
            if shard.url == public:
                return shard.shard_id
        not_a_shard = LedgerConfigError(
            f"{shown_url(url)} is not a shard of this ledger; "
            "ctxledger shards list shows them"
        )
        try:
            identity = existing_identity(url)
        except StorageUnavailable as unreachable:  # no URL of the directory's
            raise not_a_shard from unreachable
        for shard_id, known in self.identities():
            if known == identity:
                return shard_id
        raise not_a_shard

    def set_state(self, shard_id: int, state: str) -> Shard:
        statement = sql.SQL(
            "UPDATE {shards} SET state = %s WHERE shard_id = %s"
        ).format(shards=self.table(SHARDS_TABLE))
        with self.connection() as connection:
            connection.execute(statement, (state, shard_id))
        self._open_shards = None
        return next(s for s in self.shards() if s.shard_id == shard_id)

    def _rows(self, connection: psycopg.Connection[Any]) -> list[tuple[int, UUID]]:
        statement = sql.SQL(
            "SELECT shard_id, identity FROM {} ORDER BY shard_id"
        ).format(self.table(SHARDS_TABLE))
        return [(int(i), UUID(str(u))) for i, u in connection.execute(statement)]


class Connections:
    """Autocommit connections to one database, from a pool of its own (psycopg's,
    opening none until asked and at most MOST_CONNECTIONS)."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self._pool = ConnectionPool(
            kwargs={**conninfo(storage), "autocommit": True},
            min_size=0,
            max_size=MOST_CONNECTIONS,
            timeout=float(storage.settings.get("POSTGRES_CONNECT_TIMEOUT", 5)),
            num_workers=1,
            open=True,
        )

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection; the database's failures inside become StorageUnavailable."""
        with storage_failures(self.storage), self._pool.connection() as connection:
            yield connection

    def close(self) -> None:
        self._pool.close()


def database_identity(connection: psycopg.Connection[Any], schema: str) -> UUID:
    """A random id that a ledger's schema keeps for good (made on first use): two
    URLs name one database and schema, by whatever host or alias, when their ids
    agree."""
    table = sql.Identifier(schema, IDENTITY_TABLE)
    connection.execute(
        sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema))
    )
    connection.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (only_row boolean PRIMARY KEY DEFAULT true "
            "CHECK (only_row), id uuid NOT NULL)"
        ).format(table)
    )
    connection.execute(
        sql.SQL(
            "INSERT INTO {} (id) VALUES (gen_random_uuid()) ON CONFLICT DO NOTHING"
        ).format(table)
    )
    row = connection.execute(sql.SQL("SELECT id FROM {}").format(table)).fetchone()
    if row is None:  # only a table emptied by hand between the two statements
        raise LedgerConfigError(f"the table {IDENTITY_TABLE} lost its row; try again")
    return UUID(str(row[0]))


def identity_of(url: str) -> UUID:
    """The database identity of the schema at ``url`` (made there if it has none)."""
    storage = storage_for(url)
    with connected(storage) as connection:
        return database_identity(connection, storage.settings["POSTGRES_SCHEMA"])


def existing_identity(url: str) -> UUID | None:
    """The database identity of the schema at ``url``, None if it has none; it
    writes nothing there."""
    storage = storage_for(url)
    table = f'"{storage.settings["POSTGRES_SCHEMA"]}"."{IDENTITY_TABLE}"'
    with connected(storage) as connection:
        found = connection.execute(
            "SELECT to_regclass(%s) IS NOT NULL", (table,)
        ).fetchone()
        if not (found and found[0]):
            return None
        row = connection.execute(
            sql.SQL("SELECT id FROM {}").format(
                sql.Identifier(storage.settings["POSTGRES_SCHEMA"], IDENTITY_TABLE)
            )
        ).fetchone()
    return None if row is None else UUID(str(row[0]))


@contextmanager
def connected(storage: Storage) -> Iterator[psycopg.Connection[Any]]:
    """One connection to the database, closed after (for one-off queries)."""
    connections = Connections(storage)
    try:
        with connections.connection() as connection:
            yield connection
    finally:
        connections.close()


def directory_table(storage: Storage) -> str:
    """The directory's table, quoted for ``to_regclass``."""
    return f'"{storage.settings["POSTGRES_SCHEMA"]}"."{SHARDS_TABLE}"'


def conninfo(storage: Storage) -> dict[str, Any]:
    """psycopg's connection arguments for a PostgreSQL storage."""
    settings = storage.settings
    return {
        "dbname": settings["POSTGRES_DBNAME"],
        "host": settings["POSTGRES_HOST"],
        "port": settings["POSTGRES_PORT"],
        "user": settings["POSTGRES_USER"],
        "password": settings["POSTGRES_PASSWORD"],
        "connect_timeout": int(settings.get("POSTGRES_LIBPQ_CONNECT_TIMEOUT", 5)),
    }


def stored_url(url: str) -> str:
    """A shard's URL as the directory keeps it: never with a password."""
    parts = storage_for(url)
    if parts.kind != "postgres":
        raise LedgerConfigError(
            f"{shown_url(url)} is not a PostgreSQL URL; shards are PostgreSQL "
            "databases (postgresql://user@host[:port]/dbname[?schema=NAME])"
        )
    settings = parts.settings
    return (
        f"postgresql://{_quote(settings['POSTGRES_USER'])}@"
        f"{_host_part(settings['POSTGRES_HOST'])}:{settings['POSTGRES_PORT']}/"
        f"{_quote(settings['POSTGRES_DBNAME'])}?schema={settings['POSTGRES_SCHEMA']}"
        + _socket_option(settings["POSTGRES_HOST"])
    )


def _quote(text: str) -> str:
    return quote(text, safe="")


def _host_part(host: str) -> str:
    return "localhost" if host.startswith("/") else host


def _socket_option(host: str) -> str:
    return f"&host={_quote(host)}" if host.startswith("/") else ""
