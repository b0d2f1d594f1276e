"""The ledger's log on PostgreSQL: writers append in parallel, readers stay gap-free.

The library's recorder takes an exclusive table lock and sends a NOTIFY on every
append, so that notification ids commit in the order they are drawn; that serialises
every writer of the database. ``ParallelPostgresRecorder`` does neither. Instead,
each append takes its transaction id before it draws notification ids, and readers
of the log stop at ``safe_head()``: a position below which every id drawn belongs to
a transaction that has ended, so no event at or below it can still appear.

Why it holds: the sequence hands out ids in time order (CACHE 1). The head H was
stored before the reader took its own transaction id R, so every id below H was
drawn earlier still, by a transaction whose id (taken first) is older than R; and
the reader waits until no transaction older than R is running.
"""

import time
from collections.abc import Sequence
from typing import Any

from eventsourcing.persistence import (
    ApplicationRecorder,
    IntegrityError,
    InterfaceError,
    OperationalError,
    PersistenceError,
    ProgrammingError,
    StoredEvent,
    Subscription,
)
from eventsourcing.postgres import (
    PostgresApplicationRecorder,
    PostgresDatastore,
    PostgresFactory,
)
from eventsourcing.utils import Environment, EnvType, retry
from psycopg import Connection
from psycopg.errors import LockNotAvailable, UndefinedFunction
from psycopg.rows import DictRow
from psycopg.sql import SQL, Composed, Identifier, Literal
from psycopg_pool import PoolClosed, PoolTimeout, TooManyRequests

from ledger import _metrics as metrics
from ledger._store.shard_guard import MOVED_STATE, UNROUTED_STATE

SAFE_HEAD_TIMEOUT_SECONDS = 30.0
"""How long a reader waits for transactions older than its read to end."""

CONNECT_TIMEOUT_SETTING = "POSTGRES_LIBPQ_CONNECT_TIMEOUT"
"""Seconds a new connection waits for the server (libpq's ``connect_timeout``)."""

_FIRST_PAUSE, _LONGEST_PAUSE = 0.001, 0.005
_POOL_REFUSALS = (PoolTimeout, PoolClosed, TooManyRequests)  # no connection given
_TAKE_XID = SQL("SELECT pg_current_xact_id() AS xid")
_SEQUENCE_CACHE = SQL(
    "SELECT pg_get_serial_sequence(%s, 'notification_id') AS name, s.seqcache AS cache "
    "FROM pg_sequence s "
    "WHERE s.seqrelid = pg_get_serial_sequence(%s, 'notification_id')::regclass"
)
_OLDER_ENDED = SQL(
    "SELECT pg_snapshot_xmin(pg_current_snapshot()) >= %s::xid8 AS ended"
)
_OLDER_TRANSACTIONS = SQL(
    "SELECT pid, datname, application_name, state, "
    "round(extract(epoch FROM now() - xact_start)::numeric, 1) AS seconds "
    "FROM pg_stat_activity WHERE backend_xid IS NOT NULL "
    "AND age(backend_xid) >= age(%s::xid8::xid) AND pid <> pg_backend_pid() "
    "ORDER BY xact_start LIMIT 3"
)
_PREPARED = SQL(
    "SELECT gid, database FROM pg_prepared_xacts "
    "WHERE age(transaction) >= age(%s::xid8::xid) ORDER BY prepared LIMIT 3"
)
# One statement per append, in its own (implicit) transaction: the transaction id
# first, then the rows with their notification ids. One round trip, and no Python
# composite values to dump: four arrays, sent in binary, or for the usual append
# of one event its four values (dumping arrays costs the writer about 35 us more).
_CREATE_APPEND_ONE = SQL(
    "CREATE OR REPLACE FUNCTION {function}("
    "id {id_type}, version bigint, topic text, state bytea) "
    "RETURNS SETOF bigint LANGUAGE plpgsql SET lock_timeout = {wait} AS $body$ "
    "BEGIN "
    "PERFORM pg_current_xact_id(); "
    "RETURN QUERY INSERT INTO {table} "
    "(originator_id, originator_version, topic, state) "
    "VALUES (id, version, topic, state) "
    "RETURNING notification_id; "
    "END $body$"
)
_APPEND_ONE = SQL(
    "SELECT * FROM {function}(%s::{id_type}, %s::bigint, %s::text, %s::bytea) "
    "AS ids(id)"
)
_CREATE_APPEND = SQL(
    "CREATE OR REPLACE FUNCTION {function}("
    "ids {id_type}[], versions bigint[], topics text[], states bytea[]) "
    "RETURNS SETOF bigint LANGUAGE plpgsql SET lock_timeout = {wait} AS $body$ "
    "BEGIN "
    "PERFORM pg_current_xact_id(); "
    "RETURN QUERY INSERT INTO {table} "
    "(originator_id, originator_version, topic, state) "
    "SELECT * FROM unnest(ids, versions, topics, states) "
    "RETURNING notification_id; "
    "END $body$"
)
_APPEND = SQL(
    "SELECT * FROM {function}(%s::{id_type}[], %s::bigint[], %s::text[], "
    "%s::bytea[]) AS ids(id)"
)


# The same append for a caller's own transaction (connection=), in one round trip
# that never aborts the caller's transaction for a conflict: the insert runs in a
# block with an EXCEPTION clause (a subtransaction), and a conflict on the
# version's unique key, or a wait for another transaction that holds it longer
# than LOCK_WAIT_MS (the function's own lock_timeout, restored when it
# returns), gives the id CALLER_CONFLICT instead; a shard's guard refusal gives
# CALLER_MOVED or CALLER_UNROUTED. Notification ids start at 1.
# ``after_version`` and ``after_state`` (or nulls): the append was decided on the
# state after that stored event, which must then be the one the caller's
# transaction sees there, byte for byte (a speculation of the ledger's that its
# previous append in a caller's transaction committed), else CALLER_CONFLICT.
_CREATE_APPEND_CHECKED = SQL(
    "CREATE OR REPLACE FUNCTION {function}("
    "ids {id_type}[], versions bigint[], topics text[], states bytea[], "
    "after_version bigint, after_state bytea) "
    "RETURNS SETOF bigint LANGUAGE plpgsql SET lock_timeout = {wait} AS $body$ "
    "BEGIN "
    "IF current_setting('transaction_isolation') <> 'read committed' THEN "
    "RETURN NEXT -3; RETURN; END IF; "
    "PERFORM pg_current_xact_id(); "
    "IF after_version IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {table} "
    "WHERE originator_id = ids[1] AND originator_version = after_version "
    "AND state = after_state) THEN RETURN NEXT 0; RETURN; END IF; "
    "BEGIN "
    "RETURN QUERY INSERT INTO {table} "
    "(originator_id, originator_version, topic, state) "
    "SELECT * FROM unnest(ids, versions, topics, states) "
    "RETURNING notification_id; "
    "EXCEPTION "
    "WHEN unique_violation OR lock_not_available THEN RETURN NEXT 0; "
    "WHEN SQLSTATE {moved} THEN RETURN NEXT -1; "
    "WHEN SQLSTATE {unrouted} THEN RETURN NEXT -2; "
    "END; "
    "END $body$"
)
CALLER_CONFLICT, CALLER_MOVED, CALLER_UNROUTED, CALLER_ISOLATION = 0, -1, -2, -3
LOCK_WAIT_MS = 2000
"""How long one append in a caller's transaction waits for another transaction
that holds the same version of the user (the function's own lock_timeout,
restored when it returns); then it is retried as a conflict."""
OWN_LOCK_WAIT_MS = 10_000
"""How long one of the ledger's own appends waits for a lock: another
transaction that holds the user's next version and stays open (an
application's, with connection=), or a table lock (a move's fence, which waits
2 s at most for the appends ahead of it). Then it ends in ConcurrencyConflict
(LockWaitEnded): its command holds the user's turn in the process, which about
one user in 256 share, and never waits without end."""


_APPEND_CHECKED = SQL(
    "SELECT * FROM {function}(%s::{id_type}[], %s::bigint[], %s::text[], "
    "%s::bytea[], %s::bigint, %s::bytea) AS ids(id)"
)


class SafeHeadTimeout(PersistenceError):
    """Transactions that began before a read of the log stayed open too long."""


class NoConnection(PersistenceError):
    """The pool gave no connection within its timeout (not tried again)."""


class AppendNotSent(OperationalError):
    """The pool gave no connection, so nothing of the append reached the server."""


class LockWaitEnded(IntegrityError):
    """The append waited OWN_LOCK_WAIT_MS for another transaction that holds the
    user's next version, and stored nothing."""


class AppendOutcomeUnknown(OperationalError):
    """The connection failed while the append ran: it may have committed."""


class ParallelPostgresRecorder(PostgresApplicationRecorder):
    """The library's recorder, without its table lock and NOTIFY on append.

    Notification ids stay integers from the table's bigserial (whose sequence keeps
    CACHE 1, so its last value is the last id handed out), so views track as before.
    An append is one call of a function the recorder creates with its table (the
    library's own ``es_insert_events`` function takes the lock and notifies).
    """

    def __init__(
        self, datastore: PostgresDatastore, *, events_table_name: str = "stored_events"
    ) -> None:
        super().__init__(datastore, events_table_name=events_table_name)
        self._checked_sequence = False
        self._proven_head = 0  # a safe head read before: final for good
        self._table = Identifier(self.datastore.schema, self.events_table_name)
        self._append_function = Identifier(
            self.datastore.schema, f"{self.events_table_name}_append"
        )
        self.sql_create_statements[self.create_insert_function_statement_index] = (
            _CREATE_APPEND.format(
                wait=Literal(f"{OWN_LOCK_WAIT_MS}ms"),
                function=self._append_function,
                id_type=Identifier(self.datastore.originator_id_type),
                table=self._table,
            )
        )
        self._append_statement = _APPEND.format(
            function=self._append_function,
            id_type=Identifier(self.datastore.originator_id_type),
        )
        append_one = Identifier(
            self.datastore.schema, f"{self.events_table_name}_append_one"
        )
        self.sql_create_statements.append(
            _CREATE_APPEND_ONE.format(
                wait=Literal(f"{OWN_LOCK_WAIT_MS}ms"),
                function=append_one,
                id_type=Identifier(self.datastore.originator_id_type),
                table=self._table,
            )
        )
        self._append_one_statement = _APPEND_ONE.format(
            function=append_one,
            id_type=Identifier(self.datastore.originator_id_type),
        )
        bounded = Identifier(
            self.datastore.schema, f"{self.events_table_name}_append_checked"
        )
        self.sql_create_statements.append(
            _CREATE_APPEND_CHECKED.format(
                function=bounded,
                id_type=Identifier(self.datastore.originator_id_type),
                table=self._table,
                wait=Literal(f"{LOCK_WAIT_MS}ms"),
                moved=Literal(MOVED_STATE),
                unrouted=Literal(UNROUTED_STATE),
            )
        )
        self._append_checked_statement = _APPEND_CHECKED.format(
            function=bounded,
            id_type=Identifier(self.datastore.originator_id_type),
        )

    def insert_events(
        self, stored_events: Sequence[StoredEvent], **kwargs: Any
    ) -> Sequence[int] | None:
        """Appends in one statement, its own transaction, tried once.

        The library retries any connection error, but after a lost reply a retry
        stores the events again or fails as a conflict. Here a connection that
        fails while the append runs raises AppendOutcomeUnknown (broken pooled
        connections are replaced first), and the ledger finds out from the store
        whether the events were stored; AppendNotSent when no connection was given.
        """
        if not stored_events:
            return []
        statement, params = self.append_of(stored_events)
        try:
            with self.datastore.get_connection() as conn, conn.cursor() as curs:
                curs.execute(statement, params, prepare=True, binary=True)
                return [row["id"] for row in curs.fetchall()]
        except ProgrammingError as error:
            if isinstance(error.__cause__, UndefinedFunction):
                msg = (
                    f"{error}; the ledger's append function is missing (a store set "
                    "up by an older release, opened with create=False): open it "
                    "once with create=True to install it"
                )
                raise ProgrammingError(msg) from error
            raise
        except (InterfaceError, OperationalError) as error:
            if isinstance(error.__cause__, _POOL_REFUSALS):
                raise AppendNotSent(str(error)) from error
            if isinstance(error.__cause__, LockNotAvailable):
                raise LockWaitEnded(str(error)) from error
            # A connection the server closed (a restart, a terminated backend):
            # replace every broken one in the pool before the ledger reads or
            # writes again.
            self.datastore.pool.check()
            raise AppendOutcomeUnknown(str(error)) from error

    def append_of(
        self, stored_events: Sequence[StoredEvent]
    ) -> tuple[Composed, tuple[Any, ...]]:
        """The append statement and its parameters (a column of values each); the
        one-row form, with plain values, for a single event."""
        statement = self._append_statement
        params: tuple[Any, ...] = _columns(stored_events)
        if len(stored_events) == 1:
            statement, params = (
                self._append_one_statement,
                tuple(values[0] for values in params),
            )
        return statement, params

    def checked_append_of(
        self,
        stored_events: Sequence[StoredEvent],
        after: tuple[int, bytes] | None = None,
    ) -> tuple[Composed, tuple[Any, ...]]:
        """The append for a caller's own transaction: its wait for another
        transaction on the same version is bounded (LOCK_WAIT_MS), and
        with ``after`` (version, stored state) it is made only if the caller's
        transaction sees that very event there."""
        version, state = after if after is not None else (None, None)
        columns = _columns(stored_events)
        return self._append_checked_statement, (*columns, version, state)

    def subscribe(
        self, gt: int | None = None, topics: Sequence[str] = ()
    ) -> Subscription[ApplicationRecorder]:
        msg = (
            "appends send no NOTIFY; poll select_notifications(stop=safe_head()) "
            "instead of subscribing"
        )
        raise NotImplementedError(msg)

    @retry((InterfaceError, OperationalError), max_attempts=10, wait=0.2)
    def safe_head(self, timeout: float = SAFE_HEAD_TIMEOUT_SECONDS) -> int:
        """The largest notification id a reader may read up to: every id at or
        below it is stored for good or will never be. 0 for an empty log.

        The last event stored now, once every transaction that began before this
        call has ended (SafeHeadTimeout after ``timeout`` seconds). A closed
        connection is tried again; a pool that gives no connection (it already
        waited ``pool_timeout``) is not (NoConnection).
        """
        try:
            with self.datastore.get_connection() as conn:  # autocommit
                return self._safe_head(conn, timeout)
        except (InterfaceError, OperationalError) as error:
            if isinstance(error.__cause__, _POOL_REFUSALS):
                raise NoConnection(str(error)) from error
            raise

    def _safe_head(self, conn: Connection[DictRow], timeout: float) -> int:
        self._check_sequence(conn)
        head = _fetch(conn, self.max_notification_id_statement)["max"]
        if head is None:
            return 0
        if head == self._proven_head:
            # Every id at or below it was proven final before, and none above it
            # is stored yet: the head has not moved (one query, not three).
            return int(head)
        own = _fetch(conn, _TAKE_XID)["xid"]  # committed at once
        if not _fetch(conn, _OLDER_ENDED, own)["ended"]:
            _wait_for_older(conn, own, timeout)
        self._proven_head = max(self._proven_head, int(head))
        return int(head)

    def _check_sequence(self, conn: Connection[DictRow]) -> None:
        """Refuses a notification id sequence that caches ids: a session's cached
        ids are handed out after later ones, so they would not be in time order."""
        if self._checked_sequence:
            return
        table = self._table.as_string(conn)
        found = _fetch(conn, _SEQUENCE_CACHE, table, table)
        if found["cache"] != 1:
            msg = (
                f"the notification id sequence {found['name']} has CACHE "
                f"{found['cache']}; readers of the log need CACHE 1: ALTER SEQUENCE "
                f"{found['name']} CACHE 1"
            )
            raise ProgrammingError(msg)
        self._checked_sequence = True


class PostgresLogFactory(PostgresFactory):
    """The library's PostgreSQL factory, whose pooled connections also stop waiting
    for the server after ``CONNECT_TIMEOUT_SETTING`` seconds. (The library hands its
    own POSTGRES_CONNECT_TIMEOUT to the pool as the wait for a free connection.)"""

    def __init__(self, env: Environment | EnvType | None) -> None:
        super().__init__(env)
        seconds = self.env.get(CONNECT_TIMEOUT_SETTING)
        connection_options = self.datastore.pool.kwargs
        if seconds and isinstance(connection_options, dict):
            connection_options["connect_timeout"] = int(seconds)


def _columns(stored_events: Sequence[StoredEvent]) -> tuple[list[Any], ...]:
    """The events as the append functions take them: a column of values each."""
    return (
        [event.originator_id for event in stored_events],
        [event.originator_version for event in stored_events],
        [event.topic for event in stored_events],
        [event.state for event in stored_events],
    )


def _fetch(
    conn: Connection[DictRow], statement: SQL | Composed, *params: Any
) -> DictRow:
    row = conn.execute(statement, params or None).fetchone()
    if row is None:  # the events table has no notification_id sequence
        msg = f"no row from {statement.as_string(conn)!r}"
        raise ProgrammingError(msg)
    return row


def _wait_for_older(conn: Connection[DictRow], own: str, timeout: float) -> None:
    """Waits until every transaction older than ``own`` has ended (SafeHeadTimeout
    after ``timeout`` seconds); the wait is recorded in the metrics."""
    started = time.monotonic()
    deadline = started + timeout
    pause = _FIRST_PAUSE
    while True:
        time.sleep(pause)
        pause = min(pause * 2, _LONGEST_PAUSE)
        if _fetch(conn, _OLDER_ENDED, own)["ended"]:
            metrics.record_safe_head_wait(time.monotonic() - started)
            return
        if time.monotonic() >= deadline:
            metrics.record_safe_head_wait(time.monotonic() - started, timed_out=True)
            raise SafeHeadTimeout(_waited_for(conn, own, timeout))


def _waited_for(conn: Connection[DictRow], own: str, timeout: float) -> str:
    """What a reader of the log waited for, for an operator to act on."""
    running = [
        f"pid {row['pid']} (database {row['datname']!r}, application "
        f"{row['application_name']!r}, {row['state']}, open {row['seconds']} s)"
        for row in conn.execute(_OLDER_TRANSACTIONS, (own,)).fetchall()
    ]
    prepared = [
        f"prepared transaction {row['gid']!r} (database {row['database']!r})"
        for row in conn.execute(_PREPARED, (own,)).fetchall()
    ]
    blocking = "; ".join(running + prepared) or "none is visible to this role"
    return (
        f"reading the ledger's log waited {timeout:g} s for transactions that began "
        f"before the read to end, and they are still open: {blocking}. Readers of "
        "the log wait for every transaction that took a transaction id before them, "
        "since it may still append an event; have that transaction commit or end "
        "(pg_terminate_backend), then read again"
    )
