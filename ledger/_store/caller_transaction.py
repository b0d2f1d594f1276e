"""Commands appended in the caller's own PostgreSQL transaction (``connection=``).

A backend that keeps its own rows in the ledger's database passes its open
psycopg connection, and the command's events are written on it, inside its
transaction, uncommitted: the caller's COMMIT or ROLLBACK decides both.

- **What the command decides on.** First, in one round trip, the state the
  user's last append in a caller's transaction left (kept apart from the cache),
  requiring that very event in the store, or else the user's committed state
  (the process's cache); then, after a conflict, the user's committed state
  caught up from the store and the user's events that the caller's connection
  sees after it: its own uncommitted ones too, so two commands in one
  transaction follow each other, and a request id given earlier in the same
  transaction answers its repeat.
- **The append** is the ledger's function (``postgres_log``), which inserts in a
  subtransaction of its own. Another writer of the user who stored the same
  version first (committed, or in a transaction of its own that commits while
  this one waits on the unique key, 2 s at most a try), or a required event
  that is not there, is a conflict: nothing is stored, the caller's transaction
  goes on, and the command is decided again on the new state, as any conflict
  is. The caller's connection never sees an error of the ledger's own making,
  except one that the connection itself raised (it was lost, or the server ended
  the transaction): then nothing is stored, since a transaction cannot commit
  without its connection.
- **The ledger's own state** never holds what it cannot know the outcome of: the
  cache keeps the user's committed state only, marked unsettled (the user's next
  command of its own reads the store first, as after a lost reply), no snapshot
  is taken, and the outcome of a request id is not kept for repeats (a repeat
  reads the store). The views, the change feed and
  the expiry index read the log up to the safe head, which waits for the caller's
  transaction to end: a rolled-back event is never seen, a committed one is seen
  in log order.
- **Refused** (before anything is written): a connection that is not psycopg's,
  is closed, in autocommit mode outside a transaction block, in a failed or busy
  transaction, or to another database than the ledger's (with shards: than the
  user's shard); and any connection on SQLite or memory://.
"""

import asyncio
import threading
import weakref
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar
from uuid import UUID

import psycopg
from eventsourcing.persistence import IntegrityError, StoredEvent
from psycopg import sql
from psycopg.pq import TransactionStatus

from ledger._domain.contexts import UserSnapshot
from ledger._domain.events import ContextEvent
from ledger._store.failures import ledger_error
from ledger._store.postgres_log import (
    CALLER_CONFLICT,
    CALLER_ISOLATION,
    CALLER_MOVED,
    CALLER_UNROUTED,
)
from ledger._store.shard_directory import (
    IDENTITY_TABLE,
    connected,
    database_identity,
)
from ledger._store.shard_guard import MOVED_STATE, UNROUTED_STATE
from ledger._store.urls import Storage
from ledger.errors import InvalidContextInput, LedgerConfigError, StorageUnavailable

Statement = sql.SQL | sql.Composed
T = TypeVar("T")
_SELECT = sql.SQL(
    "SELECT i.isolation, e.originator_version, e.topic, e.state "
    "FROM (SELECT current_setting('transaction_isolation') AS isolation) i "
    "LEFT JOIN LATERAL (SELECT originator_version, topic, state FROM {table} "
    "WHERE originator_id = %s AND originator_version > %s) e ON true "
    "ORDER BY e.originator_version"
)
_HAS_LEDGER = sql.SQL(
    "SELECT to_regclass(%s) IS NOT NULL, to_regproc(%s) IS NOT NULL, "
    "current_setting('transaction_isolation')"
)
_READ_COMMITTED = "read committed"
_IDENTITY = sql.SQL("SELECT id FROM {table}")

_SQLITE_INSTEAD = (
    "appending in the caller's transaction needs PostgreSQL (the connection is the "
    "caller's psycopg connection to the ledger's database); on {kind}, keep the "
    "exactly-once pattern: derive a request_id from your own row's id, commit your "
    "row, then call the ledger with that request_id until it answers (a retry "
    "returns the first call's result), or write an outbox row in your transaction "
    "and let a worker apply it with that request_id"
)


class Port(Protocol):
    """What a command needs of the caller's connection, sync or async."""

    @property
    def key(self) -> object:
        """What the connection is known by (its database identity is kept)."""

    def describe(self) -> tuple[bool, TransactionStatus, bool]:
        """Whether it is closed, its transaction status, and autocommit."""

    def isolation(self) -> psycopg.IsolationLevel | None:
        """The isolation set on the connection (None: the server's default)."""

    def rows(self, statement: Statement, params: Sequence[Any]) -> list[Any]:
        """Runs a statement in the caller's transaction; the rows it returns."""


class _Described:
    """What a port tells of its connection, sync or async alike."""

    _connection: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]

    @property
    def key(self) -> object:
        return self._connection

    def isolation(self) -> psycopg.IsolationLevel | None:
        """The isolation set on the connection (None: the server's default)."""
        return self._connection.isolation_level

    def describe(self) -> tuple[bool, TransactionStatus, bool]:
        connection = self._connection
        return (
            connection.closed,
            connection.info.transaction_status,
            connection.autocommit,
        )


class SyncPort(_Described):
    """A psycopg ``Connection`` of the caller's."""

    def __init__(self, connection: psycopg.Connection[Any]) -> None:
        self._sync = self._connection = connection

    def rows(self, statement: Statement, params: Sequence[Any]) -> list[Any]:
        with self._sync.cursor(binary=True) as cursor:
            cursor.execute(statement, params)
            return cursor.fetchall()


class AsyncPort(_Described):
    """A psycopg ``AsyncConnection`` of the caller's, used from a thread of
    AsyncContextLedger's pool while the caller's task awaits the command: each
    statement runs on the connection's event loop, through its own lock."""

    def __init__(
        self, connection: psycopg.AsyncConnection[Any], loop: asyncio.AbstractEventLoop
    ) -> None:
        self._async = self._connection = connection
        self._loop = loop
        self._cancelled = False

    def cancel(self) -> None:
        """The task that awaits the command was cancelled (on the loop, before
        the caller's transaction can end): no statement of the command runs on
        the connection after this one, so nothing of it outlives the
        transaction the caller rolls back."""
        self._cancelled = True

    def rows(self, statement: Statement, params: Sequence[Any]) -> list[Any]:
        return self._on_loop(self._rows(statement, params))

    async def _rows(self, statement: Statement, params: Sequence[Any]) -> list[Any]:
        if self._cancelled:  # checked on the loop, in order with the caller
            msg = "the call was cancelled; its statements no longer run"
            raise CallCancelled(msg)
        async with self._async.cursor(binary=True) as cursor:
            await cursor.execute(statement, params)
            return await cursor.fetchall()

    def _on_loop(self, work: Coroutine[Any, Any, T]) -> T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            work.close()
            msg = "an AsyncConnection's statements cannot wait on its own loop"
            raise RuntimeError(msg)
        return asyncio.run_coroutine_threadsafe(work, self._loop).result()


def port_of(connection: object) -> Port:
    """The port of a caller's synchronous connection; InvalidContextInput for
    anything that is not one (an AsyncConnection goes through AsyncContextLedger,
    which gives its port)."""
    if isinstance(connection, (SyncPort, AsyncPort)):
        return connection
    if isinstance(connection, psycopg.Connection):
        return SyncPort(connection)
    if isinstance(connection, psycopg.AsyncConnection):
        raise InvalidContextInput(
            "connection",
            type(connection).__name__,
            "is an AsyncConnection, which ContextLedger cannot wait on",
            "pass it to AsyncContextLedger's command, or give ContextLedger a "
            "psycopg.Connection",
        )
    raise InvalidContextInput(
        "connection",
        type(connection).__name__,
        "is not a psycopg connection",
        "pass the psycopg.Connection of your open transaction",
    )


class CallerTransactions:
    """Commands on callers' connections for one application: the connections'
    checks, and the reads and appends in their transactions."""

    def __init__(
        self,
        storage: Storage,
        schema: str,
        table: sql.Identifier,
        append_function: str,
        identity: Callable[[], UUID],
        *,
        shard: Callable[[], int | None],
    ) -> None:
        self.storage = storage
        self._schema = schema
        self._table = table
        self._append_function = append_function
        self._own_identity = identity
        self._shard = shard
        self._identity: UUID | None = None
        self._known: weakref.WeakKeyDictionary[object, UUID] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()

    def check(self, port: Port) -> None:
        """Refuses a connection the ledger may not append on (nothing is written)."""
        if self.storage.kind != "postgres":
            raise LedgerConfigError(_SQLITE_INSTEAD.format(kind=self.storage.kind))
        closed, status, autocommit = port.describe()
        level = port.isolation()
        if level is not None and level != psycopg.IsolationLevel.READ_COMMITTED:
            raise _isolation_refused(level.name.lower().replace("_", " "))
        if closed:
            raise InvalidContextInput(
                "connection",
                "closed",
                "is closed",
                "pass the connection of your open transaction",
            )
        if status == TransactionStatus.INERROR:
            raise InvalidContextInput(
                "connection",
                "failed transaction",
                "is in a failed transaction, so nothing was appended",
                "roll it back (or back to a savepoint) first",
            )
        if status in (TransactionStatus.ACTIVE, TransactionStatus.UNKNOWN):
            raise InvalidContextInput(
                "connection",
                status.name.lower(),
                "is running a statement or broken",
                "call the ledger between your statements, on a working connection",
            )
        if autocommit and status == TransactionStatus.IDLE:
            raise InvalidContextInput(
                "connection",
                "autocommit",
                "is in autocommit mode, where every statement commits alone, so "
                "the ledger's events could not commit or roll back with your rows",
                "append inside `with connection.transaction():`, or use a "
                "connection with autocommit=False",
            )
        ours = self._ledger_identity()  # made first, if the schema has none yet
        if self._identity_of(port) != ours:
            shard = self._shard()
            where = (
                "the ledger's database"
                if shard is None
                else f"shard {shard}'s database, which holds this user"
            )
            raise LedgerConfigError(
                f"connection= is to another database or schema than {where} "
                f"({self.storage.description}): pass a connection to that database; "
                "nothing was appended"
            )

    def _ledger_identity(self) -> UUID:
        with self._lock:
            if self._identity is None:
                self._identity = self._own_identity()
            return self._identity

    def _identity_of(self, port: Port) -> UUID | None:
        """The identity of the database and schema the connection is to (None:
        it has no ledger there); kept per connection."""
        with self._lock:
            known = self._known.get(port.key)
        if known is not None:
            return known
        schema = self._schema
        table = sql.Identifier(schema, IDENTITY_TABLE)
        append = f'"{schema}"."{self._append_function}"'
        with self.failures():
            (exists, appends, isolation) = port.rows(
                _HAS_LEDGER, (f'"{schema}"."{IDENTITY_TABLE}"', append)
            )[0]
            if isolation != _READ_COMMITTED:
                raise _isolation_refused(isolation)
            if not exists:
                return None
            if not appends:
                raise LedgerConfigError(
                    "the ledger's append for callers' transactions is missing (a "
                    "store set up by an older release): open the ledger once with "
                    "create=True to install it; nothing was appended"
                )
            rows = port.rows(_IDENTITY.format(table=table), ())
        if not rows:
            return None
        identity = UUID(str(rows[0][0]))
        with self._lock:
            self._known[port.key] = identity
        return identity

    def stored_after(
        self, port: Port, aggregate_id: UUID, version: int
    ) -> list[StoredEvent]:
        """The user's events after ``version`` as the caller's transaction sees
        them (its own uncommitted ones included); refused in a transaction that
        is not READ COMMITTED (read with them, in the same round trip)."""
        with self.failures():
            rows = port.rows(_SELECT.format(table=self._table), (aggregate_id, version))
        if rows and rows[0][0] != _READ_COMMITTED:
            raise _isolation_refused(rows[0][0])
        return [
            StoredEvent(
                originator_id=aggregate_id,
                originator_version=row[1],
                topic=row[2],
                state=bytes(row[3]),
            )
            for row in rows
            if row[1] is not None and row[2] != UserSnapshot.TOPIC
        ]

    def append(
        self,
        port: Port,
        statement: Statement,
        params: Sequence[Any],
    ) -> None:
        """Runs the append in the caller's transaction, one round trip. The
        ledger's function inserts in a subtransaction of its own, so a conflict
        (IntegrityError: another writer holds the version, or held it longer than
        its lock wait) or a shard's refusal (LedgerConfigError) leaves the
        caller's transaction going on, and nothing stored."""
        try:
            with self.failures():
                ids = [row[0] for row in port.rows(statement, params)]
        except StorageUnavailable as failure:
            if isinstance(
                failure.cause,
                (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure),
            ):
                raise TransactionAborted(str(failure.cause)) from failure
            raise
        if ids and min(ids) == CALLER_ISOLATION:
            raise _isolation_refused("not read committed")
        if ids and min(ids) == CALLER_CONFLICT:
            msg = "another transaction stored or holds the user's next version"
            raise IntegrityError(msg)
        if ids and min(ids) in (CALLER_MOVED, CALLER_UNROUTED):
            state = MOVED_STATE if min(ids) == CALLER_MOVED else UNROUTED_STATE
            refused = _GuardRefused(state)
            raise ledger_error(self.storage, refused, writing=True) from refused

    @contextmanager
    def failures(self) -> Iterator[None]:
        """A failure of the caller's connection becomes the ledger's error."""
        try:
            yield
        except IntegrityError:
            raise
        except psycopg.Error as error:
            raise ledger_error(self.storage, error, writing=True) from error


class CallCancelled(RuntimeError):
    """The command's awaiting task was cancelled: the rest of it does not run on
    the caller's connection."""


class TransactionAborted(Exception):
    """The database aborted the caller's transaction (a deadlock with another
    transaction, or a serialization failure): nothing of it will commit."""


def _isolation_refused(isolation: str) -> InvalidContextInput:
    return InvalidContextInput(
        "connection",
        isolation,
        "is in a transaction whose isolation is not READ COMMITTED, where the "
        "ledger's reads and the shards' fences would not see what was committed "
        "since the transaction began",
        "use READ COMMITTED (PostgreSQL's default) for transactions that call the "
        "ledger; nothing was appended",
    )


class _GuardRefused(psycopg.DatabaseError):
    """A shard's guard refused the append (its SQLSTATE, as the trigger raises
    it), reported by the ledger's function instead of raised."""

    def __init__(self, state: str) -> None:
        super().__init__(f"the shard's guard refused the write ({state})")
        self.sqlstate = state


def events_of(
    stored: list[StoredEvent], to_domain: Callable[[StoredEvent], Any]
) -> list[ContextEvent]:
    """The stored events decoded by the application's mapper."""
    events = [to_domain(event) for event in stored]
    return [event for event in events if isinstance(event, ContextEvent)]


def ledger_identity(storage: Storage) -> UUID:
    """The identity of the ledger's own database and schema (made on first use)."""
    with connected(storage) as connection:
        return database_identity(connection, str(storage.settings["POSTGRES_SCHEMA"]))
