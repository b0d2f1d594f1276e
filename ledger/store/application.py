"""The ``eventsourcing`` application that stores the users' context streams."""

import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime
from functools import wraps
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Protocol, Self, TypeVar, cast
from uuid import UUID

import psycopg
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import (
    IntegrityError,
    MapperDeserialisationError,
    PersistenceError,
)
from eventsourcing.utils import Environment, get_topic

from ledger.domain.contexts import (
    UserContexts,
    UserSnapshot,
    project_user,
    user_aggregate_id,
)
from ledger.domain.events import ContextEvent
from ledger.domain.hashing import record_hash
from ledger.errors import LedgerCorrupted, StorageUnavailable
from ledger.store.backends import exclusive_setup
from ledger.store.cache import AggregateCache
from ledger.store.serialization import MsgpackTranscoder, PydanticMapper
from ledger.store.urls import Storage

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
            "MAPPER_TOPIC": get_topic(PydanticMapper),
            **(env or {}),
        }
        return Environment(name, settings)

    def __init__(self, env: Any = None) -> None:
        super().__init__(env)
        self.cache = AggregateCache(AGGREGATE_CACHE_SIZE)

    def load(self, user_id: str, now: datetime) -> UserContexts:
        """The user's aggregate as stored now; an empty one for a new user."""
        aggregate_id = user_aggregate_id(user_id)
        cached = self.cache.get(aggregate_id)
        if cached is None:
            try:
                with replaying(user_id):
                    aggregate: UserContexts = self.repository.get(
                        aggregate_id, projector_func=project_user
                    )
            except AggregateNotFoundError:
                return UserContexts.start(user_id, now)
            self.cache.offer(aggregate.copy())
            return aggregate
        aggregate = cached.copy()
        with replaying(user_id):
            newer = list(self.events.get(aggregate_id, gt=aggregate.version))
            project_user(aggregate, cast(list[ContextEvent], newer))
        if newer:
            self.cache.offer(aggregate.copy())
        return aggregate

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
        self.events.put(events)
        self.cache.offer(aggregate)
        if self.snapshots is not None and (
            aggregate.version // SNAPSHOT_INTERVAL > before // SNAPSHOT_INTERVAL
        ):
            try:
                self.snapshots.put([UserSnapshot.take(aggregate)])
            except PersistenceError as error:
                # The events are stored: failing the call now would make callers
                # retry a command that already took effect. Loading just replays more.
                _log.warning(
                    "snapshot of %s at version %d not stored: %s",
                    aggregate.id,
                    aggregate.version,
                    error,
                )

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
            with replaying(user_id):
                page = list(self.events.get(aggregate_id, gt=version, limit=size))
            for event in page:
                if isinstance(event, ContextEvent):
                    yield event
            if len(page) < size:
                return
            version = page[-1].originator_version
            size = min(size * 2, MAX_PAGE)

    def snapshot_before(
        self, user_id: str, is_early: Callable[[datetime], bool]
    ) -> UserSnapshot | None:
        """The newest usable snapshot whose time ``is_early`` accepts.

        A user's event times never go backwards (``UserContexts._trigger``), so
        snapshot times grow with their versions and bisection over the versions
        finds it in a few reads. A snapshot is usable when it decodes and its hash
        is that of the stored event of its version; one that is not is passed over.
        """
        if self.snapshots is None:
            return None
        aggregate_id = user_aggregate_id(user_id)
        newest = self._snapshot(aggregate_id, None)
        if newest is None:
            return None
        if is_early(newest.timestamp) and self._usable(newest):
            return newest
        best = None
        low, high = 1, newest.originator_version - 1
        while low <= high:
            middle = (low + high) // 2
            snapshot = self._snapshot(aggregate_id, middle)
            if snapshot is None:
                low = middle + 1
            elif is_early(snapshot.timestamp) and self._usable(snapshot):
                best, low = snapshot, middle + 1
            else:
                high = snapshot.originator_version - 1
        return best

    def _snapshot(self, aggregate_id: UUID, lte: int | None) -> UserSnapshot | None:
        """The newest snapshot at or below version ``lte``, if it decodes."""
        assert self.snapshots is not None  # noqa: S101  (checked by the caller)
        try:
            found = list(self.snapshots.get(aggregate_id, lte=lte, desc=True, limit=1))
        except MapperDeserialisationError as error:
            _log.warning("snapshot of %s not used: %s", aggregate_id, error)
            return None
        return found[0] if found and isinstance(found[0], UserSnapshot) else None

    def _usable(self, snapshot: UserSnapshot) -> bool:
        version = snapshot.originator_version
        try:
            events = list(
                self.events.get(snapshot.originator_id, gt=version - 1, lte=version)
            )
        except MapperDeserialisationError:
            return False
        return (
            len(events) == 1
            and isinstance(events[0], ContextEvent)
            and events[0].timestamp == snapshot.timestamp
            and events[0].user_id == snapshot.user_id
            and record_hash(events[0].ledger_record()) == snapshot.last_hash
        )

    def state_as_of(self, user_id: str, as_of: datetime) -> UserContexts | None:
        """The user's aggregate after every event at or before ``as_of``."""
        snapshot = self.snapshot_before(user_id, lambda at: at <= as_of)
        aggregate = None if snapshot is None else UserContexts.from_snapshot(snapshot)
        after = 0 if snapshot is None else snapshot.originator_version
        first = FIRST_PAGE if snapshot is None else SNAPSHOT_INTERVAL + 10
        for event in self.events_after(user_id, after, first):
            if event.timestamp > as_of:
                break
            with replaying(user_id):
                aggregate = project_user(aggregate, (event,))
        return aggregate

    def events_between(
        self, user_id: str, since: datetime | None, until: datetime | None
    ) -> Iterator[ContextEvent]:
        """The user's events with ``since <= occurred_at < until``, in order."""
        after = 0
        if since is not None:
            snapshot = self.snapshot_before(user_id, lambda at: at < since)
            after = 0 if snapshot is None else snapshot.originator_version
        for event in self.events_after(user_id, after, FIRST_PAGE):
            if until is not None and event.timestamp >= until:
                return
            if since is None or event.timestamp >= since:
                yield event


@contextmanager
def replaying(user_id: str) -> Iterator[None]:
    """Stored events of the user that cannot be decoded (MapperDeserialisationError
    is a ValueError) or do not replay (``UserContexts.apply`` raises ValueError)
    raise LedgerCorrupted. Only stored data reaches here: arguments are validated
    before anything is read."""
    try:
        yield
    except ValueError as error:
        raise LedgerCorrupted(user_id, str(error)) from error


class ClosesApplication:
    """Owns an application: ``close()`` closes it, and so does leaving a ``with``."""

    _app: LedgerApplication

    def close(self) -> None:
        self._app.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class HasStorage(Protocol):
    storage: Storage


S = TypeVar("S", bound=HasStorage)
P = ParamSpec("P")
T = TypeVar("T")


@contextmanager
def storage_failures(storage: Storage) -> Iterator[None]:
    """A failure of the database inside becomes StorageUnavailable, naming it."""
    try:
        yield
    except IntegrityError:
        raise  # a conflict, handled where commands are retried
    except (PersistenceError, psycopg.Error, sqlite3.Error) as error:
        unavailable = StorageUnavailable(storage.description, error)
        for note in getattr(error, "__notes__", ()):
            unavailable.add_note(note)
        raise unavailable from error


def storage_errors(
    method: Callable[Concatenate[S, P], T],
) -> Callable[Concatenate[S, P], T]:
    """A method whose database failures become StorageUnavailable."""

    def guarded(owner: S, /, *args: P.args, **kwargs: P.kwargs) -> T:
        with storage_failures(owner.storage):
            return method(owner, *args, **kwargs)

    return wraps(method)(guarded)


def setup_lock(storage: Storage) -> AbstractContextManager[None]:
    """Held while creating tables: PostgreSQL's DDL races between processes."""
    if storage.kind == "postgres":
        return exclusive_setup(storage.settings)
    return nullcontext()


def open_application(storage: Storage) -> LedgerApplication:
    """The application on ``storage``, its tables created if need be."""
    try:
        with setup_lock(storage):
            return LedgerApplication(env=storage.settings)
    except (OSError, PersistenceError, psycopg.Error, sqlite3.Error) as error:
        raise StorageUnavailable(storage.description, error) from error
