"""The ``eventsourcing`` application that stores the users' context streams:
the write path, the cache of aggregates, snapshots and reading a user's events."""

import functools
import logging
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

from eventsourcing.application import Application
from eventsourcing.persistence import (
    ApplicationRecorder,
    EventStore,
    Mapper,
    PersistenceError,
)
from eventsourcing.utils import Environment, get_topic
from psycopg import sql

from ledger import _metrics as metrics
from ledger import _tracing as tracing
from ledger._domain.contexts import (
    UserContexts,
    UserSnapshot,
    project_user,
    user_aggregate_id,
)
from ledger._domain.events import (
    ContextEvent,
)
from ledger._store.appends import Appends
from ledger._store.backends import backend_for
from ledger._store.cache import AggregateCache
from ledger._store.caller_transaction import (
    CallerTransactions,
    Port,
    events_of,
    ledger_identity,
)
from ledger._store.failures import DATABASE_ERRORS, storage_failures
from ledger._store.keys import KeyDestroyed, KeyRowRefused, MasterKey
from ledger._store.records import EventRecord, RecordReader
from ledger._store.serialization import MsgpackTranscoder, PydanticMapper
from ledger._store.snapshot_rule import trusted_snapshot
from ledger._store.urls import Storage
from ledger.errors import (
    LedgerClosed,
    LedgerCorrupted,
    LedgerError,
    LedgerNotFound,
    StorageUnavailable,
)

SNAPSHOT_INTERVAL = 50
FIRST_PAGE = 100
MAX_PAGE = 2000
_log = logging.getLogger(__name__)
AGGREGATE_CACHE_SIZE = 2048


def utc_now() -> datetime:
    """The clock every event takes its time from (freezegun moves it in tests)."""
    return datetime.now(tz=UTC)


class LedgerApplication(Application[UUID]):
    """Stores one stream of context events per user, with snapshots."""

    name = "ctxledger"

    def construct_env(self, name: str, env: Any = None) -> Environment:
        # Only the settings given here count: process environment variables such as
        # PERSISTENCE_MODULE or CIPHER_KEY must not silently reconfigure the ledger.
        settings = {
            "IS_SNAPSHOTTING_ENABLED": "y",
            "TRANSCODER_TOPIC": get_topic(MsgpackTranscoder),
            **(env or {}),
        }
        return Environment(name, settings)

    def __init__(
        self,
        storage: Storage,
        *,
        create: bool = True,
        master_key: MasterKey | None = None,
    ) -> None:
        self.storage = storage
        self.backend = backend_for(storage)
        self._create, self._master_key = create, master_key
        super().__init__({**storage.settings, "CREATE_TABLE": "y" if create else "n"})
        self.cache = AggregateCache(AGGREGATE_CACHE_SIZE)
        self._appends = Appends(self.events, self.recorder, self.storage)
        self.records = RecordReader(self._mapper, self.keys)
        self._log_reader: ApplicationRecorder | None = None
        self._reader_lock = threading.Lock()
        self.shard_id: int | None = None
        """The shard this database is of a sharded ledger (None: a ledger alone)."""

    def construct_mapper(self) -> Mapper[UUID]:
        """The mapper, composed with the users' data keys. The keys live beside
        the events, so the recorder is made first (``construct_recorder`` then
        returns it)."""
        self._recorder = super().construct_recorder()
        self.keys = self.backend.key_store(
            getattr(self._recorder, "datastore", None), self._master_key
        )
        if self._create:
            self.keys.create_table()
        self.keys.check_master_key(create=self._create)
        return PydanticMapper(self.construct_transcoder(), keys=self.keys)

    def construct_recorder(self) -> ApplicationRecorder:
        return self._recorder

    @property
    def _mapper(self) -> PydanticMapper:
        return cast(PydanticMapper, self.mapper)

    @property
    def log_reader(self) -> ApplicationRecorder:
        """The recorder that readers of the whole log use (the change feed, the
        expiry index, retention, verification): on PostgreSQL a pool of its own,
        opened on first use, so that a read waiting at the safe head never holds
        a connection that commands need."""
        with self._reader_lock:
            if self.closing.is_set():
                raise LedgerClosed  # no pool is opened that nothing would close
            if self._log_reader is None:
                self._log_reader = self.backend.log_reader(
                    self.recorder, self.name, self.env
                )
            return self._log_reader

    def check_connections(self) -> None:
        """After a failure of the database: replaces the pooled connections (of
        commands and of readers) that the server closed."""
        with self._reader_lock:
            reader = self._log_reader
        recorders = [self.recorder]
        if reader is not None and reader is not self.recorder:
            recorders.append(reader)
        # The server still away: the next try finds it out.
        with suppress(StorageUnavailable), storage_failures(self.storage):
            self.backend.check_connections(recorders)

    def close(self) -> None:
        with self._reader_lock:
            self.closing.set()
        super().close()
        with self._reader_lock:
            reader, self._log_reader = self._log_reader, None
        if reader is not None and reader is not self.recorder:
            reader.datastore.close()  # type: ignore[attr-defined]

    def load(
        self, user_id: str, now: datetime, *, snapshot_cold: bool = False
    ) -> UserContexts:
        """The user's aggregate as stored now; an empty one for a new user.

        ``snapshot_cold``: a load from the store that replays SNAPSHOT_INTERVAL
        events or more stores a snapshot of what it loaded (for users written in
        callers' own transactions, which take none)."""
        aggregate_id = user_aggregate_id(user_id)
        cached = self.cache.get(aggregate_id)
        if cached is None:
            return self._load_stored(user_id, now, snapshot=snapshot_cold)
        with replaying(user_id), self.keys.reading(state=True):
            aggregate = cached.copy()
            newer = list(self.events.get(aggregate_id, gt=aggregate.version))
            project_user(aggregate, cast(list[ContextEvent], newer))
        if newer:
            self.cache.offer(aggregate.copy())
        return aggregate

    def _load_stored(
        self, user_id: str, now: datetime, *, snapshot: bool
    ) -> UserContexts:
        """The user's aggregate from its latest trusted snapshot and the events
        after it."""
        aggregate_id = user_aggregate_id(user_id)
        with replaying(user_id), self.keys.reading(state=True):
            found = trusted_snapshot(self.snapshots, self._mapper, aggregate_id)
            start = None if found is None else found.originator_version
            stored = project_user(
                None if found is None else UserContexts.from_snapshot(found),
                cast(Iterator[ContextEvent], self.events.get(aggregate_id, gt=start)),
            )
        if stored is None:
            return UserContexts.start(user_id, now)
        self.cache.offer(stored.copy())
        replayed = stored.version - (start or 0)
        if snapshot and replayed >= SNAPSHOT_INTERVAL and self._writes_snapshots:
            self._snapshot(cast(EventStore[UUID], self.snapshots), stored)
        return stored

    @property
    def _writes_snapshots(self) -> bool:
        return self._create and self.snapshots is not None

    def load_cached(self, user_id: str, now: datetime) -> UserContexts:
        """The user's aggregate as this process last saw it, without reading the store.

        It may be stale if other processes wrote since. Only commands that append
        may use it: their events are numbered from the cached version, so a stale
        decision conflicts on save instead of being stored.
        """
        cached = self.cache.get(user_aggregate_id(user_id))
        return self.load(user_id, now) if cached is None else cached.copy()

    def record(self, aggregate: UserContexts) -> None:
        """Stores the aggregate's new events, then caches and maybe snapshots it.

        After a successful save the aggregate is exactly the recorded state (only
        ``apply`` changes it), so it is cached and snapshotted as it is, instead of
        being read back from the store. The caller must not change it afterwards.
        """
        events = aggregate.collect_events()
        if not events:
            return
        before = aggregate.version - len(events)
        # The event store's put is what save() does for us; save() would first run
        # runtime Protocol checks that cost more than the rest of the Python work.
        try:
            self._appends.put(events)
        except KeyRowRefused as refused:  # a planted or altered key row
            raise LedgerCorrupted(aggregate.user_id, str(refused)) from refused
        except KeyDestroyed as destroyed:
            # Sealed under a key destroyed since: a conflict if the user's
            # forgotten event took the version (the retry reloads), else the key
            # went without one (the user was damaged when forgotten).
            if not self._appends.taken(events[0]):
                raise LedgerCorrupted(
                    aggregate.user_id,
                    f"{destroyed}, but no forgotten event was recorded (its events "
                    "did not replay when it was forgotten); once they replay, run "
                    "forget_user again to record the erasure",
                ) from destroyed
            raise
        metrics.count_events(event.KIND for event in events)
        tracing.count_events(len(events))
        self.cache.offer(aggregate)
        if self.snapshots is not None and (
            aggregate.version // SNAPSHOT_INTERVAL > before // SNAPSHOT_INTERVAL
        ):
            self._snapshot(self.snapshots, aggregate)

    def _snapshot(self, snapshots: EventStore[UUID], aggregate: UserContexts) -> None:
        """Stores a snapshot of the aggregate just recorded. A failure is logged:
        the events are stored, so failing the call now would make callers retry
        a command that already took effect; loading just replays more."""
        try:
            snapshots.put([UserSnapshot.take(aggregate)])
        except PersistenceError as error:
            _log.warning(
                "snapshot of %s at version %d not stored: %s",
                aggregate.id,
                aggregate.version,
                error,
            )

    @functools.cached_property
    def caller_transactions(self) -> CallerTransactions:
        """Appends in callers' own PostgreSQL transactions (``connection=``)."""
        recorder: Any = self.recorder
        schema = str(self.storage.settings.get("POSTGRES_SCHEMA", "public"))
        table = getattr(recorder, "_table", sql.Identifier("unused"))
        events_table = str(getattr(recorder, "events_table_name", ""))
        return CallerTransactions(
            self.storage,
            schema,
            table,
            f"{events_table}_append_checked",
            lambda: ledger_identity(self.storage),
            shard=lambda: self.shard_id,
        )

    def load_in(self, port: Port, user_id: str, now: datetime) -> UserContexts:
        """The user's aggregate as the caller's transaction sees it: as committed,
        then the events after it on the caller's connection (its own too)."""
        aggregate = self.load(user_id, now, snapshot_cold=True)
        stored = self.caller_transactions.stored_after(
            port, aggregate.id, aggregate.version
        )
        if stored:
            with replaying(user_id), self.keys.reading(state=True):
                events = events_of(stored, self.mapper.to_domain_event)
                project_user(aggregate, events)
        return aggregate

    def events_in(
        self, port: Port, user_id: str, first: int, last: int
    ) -> list[ContextEvent]:
        """The user's events from ``first`` to ``last`` as the caller's
        transaction sees them."""
        stored = self.caller_transactions.stored_after(
            port, user_aggregate_id(user_id), first - 1
        )
        with replaying(user_id), self.keys.reading():
            return events_of(
                [event for event in stored if event.originator_version <= last],
                self.mapper.to_domain_event,
            )

    def record_in(
        self,
        port: Port,
        aggregate: UserContexts,
        after: tuple[int, bytes] | None = None,
    ) -> None:
        """Appends the aggregate's new events in the caller's transaction. What
        becomes of them is the caller's to decide: the cache keeps the user's
        committed state only, marked unsettled (the user's next command reads the
        store before it decides), and no snapshot is taken. The state after the
        append is kept apart, as a speculation that the caller commits: the
        user's next command in a caller's transaction decides on it, and its
        append requires the last event appended here (``after``)."""
        events = aggregate.collect_events()
        if not events:
            return
        self.cache.unsettle(aggregate.id)
        try:
            stored = [self.mapper.to_stored_event(event) for event in events]
        except KeyRowRefused as refused:  # a planted or altered key row
            raise LedgerCorrupted(aggregate.user_id, str(refused)) from refused
        recorder: Any = self.recorder
        statement, params = recorder.checked_append_of(stored, after)
        self.caller_transactions.append(port, statement, params)
        last = stored[-1]
        self.cache.speculate(aggregate.copy(), (last.originator_version, last.state))
        metrics.count_events(event.KIND for event in events)
        tracing.count_events(len(events))

    def state_at(self, user_id: str, version: int) -> UserContexts:
        """The user's aggregate right after ``version`` (from a snapshot at or
        before it, if one decodes)."""
        aggregate_id = user_aggregate_id(user_id)
        start: UserContexts | None = None
        with replaying(user_id), self.keys.reading():
            snapshot = trusted_snapshot(
                self.snapshots, self._mapper, aggregate_id, lte=version
            )
        if snapshot is not None:
            start = UserContexts.from_snapshot(snapshot)
        after = 0 if start is None else start.version
        events = self.events_between_versions(user_id, after + 1, version)
        state = self.replay(user_id, start, events)
        if state is None:
            raise LedgerCorrupted(user_id, f"no events up to version {version}")
        return state

    def events_between_versions(
        self, user_id: str, first: int, last: int
    ) -> list[ContextEvent]:
        """The user's events from version ``first`` to ``last``."""
        with replaying(user_id), self.keys.reading():
            events = self.events.get(user_aggregate_id(user_id), gt=first - 1, lte=last)
            return [event for event in events if isinstance(event, ContextEvent)]

    def events_after(
        self, user_id: str, version: int, first_page: int = 1000
    ) -> Iterator[ContextEvent]:
        """The user's events after ``version``, in order, read a page at a time.

        Pages grow from ``first_page`` to MAX_PAGE, so a reader that stops early
        (as-of and period queries) decodes few events it does not use.
        """
        aggregate_id = user_aggregate_id(user_id)
        size = first_page
        while True:
            with replaying(user_id), self.keys.reading():
                page = list(self.events.get(aggregate_id, gt=version, limit=size))
            for event in page:
                if isinstance(event, ContextEvent):
                    yield event
            if len(page) < size:
                return
            version = page[-1].originator_version
            size = min(size * 2, MAX_PAGE)

    def records_after(
        self, user_id: str, version: int, first_page: int = 1000
    ) -> Iterator[EventRecord]:
        """``events_after`` read into records (``ledger._store.records``): what
        history reads need, decoded straight from the stored states."""
        aggregate_id = user_aggregate_id(user_id)
        size = first_page
        while True:
            with replaying(user_id), self.keys.reading():
                page = self.backend.stream_rows(
                    self.recorder, aggregate_id, version, size
                )
                records = [
                    self.records.read_row(aggregate_id, *row)
                    for row in page
                    if row[1] != UserSnapshot.TOPIC  # as events_after, which skips it
                ]
            yield from records
            if len(page) < size:
                return
            version = page[-1][0]
            size = min(size * 2, MAX_PAGE)

    def replay(
        self,
        user_id: str,
        aggregate: UserContexts | None,
        events: Iterable[ContextEvent],
    ) -> UserContexts | None:
        """``aggregate`` (None: no state yet) after ``events`` of the user."""
        with replaying(user_id):
            return project_user(aggregate, events)


@contextmanager
def replaying(user_id: str) -> Iterator[None]:
    """Stored events of the user that cannot be decoded (MapperDeserialisationError
    is a ValueError) or do not replay (``UserContexts.apply`` raises ValueError)
    raise LedgerCorrupted. Only stored data reaches here: arguments are validated
    before anything is read. A LedgerError (a master key that does not open the
    keys) passes as it is."""
    try:
        yield
    except LedgerError:
        raise
    except ValueError as error:
        raise LedgerCorrupted(user_id, str(error)) from error


def open_application(
    storage: Storage, *, create: bool = True, master_key: MasterKey | None = None
) -> LedgerApplication:
    """The application on ``storage``, its tables created if need be.

    With ``create=False`` a storage that holds no ledger raises LedgerNotFound, and
    nothing is created or changed (no DDL): a reader may have read-only rights.
    """
    backend = backend_for(storage)
    try:
        if not create:
            if not backend.exists():
                raise LedgerNotFound(storage.description)
            return LedgerApplication(storage, create=False, master_key=master_key)
        with backend.setup_lock():
            return LedgerApplication(storage, master_key=master_key)
    except (OSError, *DATABASE_ERRORS) as error:
        raise StorageUnavailable(storage.description, error) from error
