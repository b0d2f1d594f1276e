"""``Projections``: run, rebuild, check and query the views of one ledger."""

import threading
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Self

from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore

from ledger.domain import validation
from ledger.domain.models import Context, EventKind
from ledger.errors import LedgerConfigError
from ledger.store.application import (
    ClosesApplication,
    LedgerApplication,
    open_application,
    setup_lock,
    storage_errors,
    storage_failures,
)
from ledger.store.urls import Storage, resolve_url, storage_for
from projections.active import ActiveContextsView
from projections.audit import AuditView
from projections.continuity import ContinuityView
from projections.errors import UnknownView, ViewsNeedDurableStorage
from projections.models import AuditRow, ContinuityFigures, ViewStatus
from projections.processing import OnBatch, Processor, Target
from projections.reader import LogReader
from projections.store import ViewStore
from projections.view import Generation, View

DEFAULT_BATCH_SIZE = 1000
DEFAULT_POLL_SECONDS = 0.2
VIEW_NAMES = tuple(
    view.name for view in (ActiveContextsView, AuditView, ContinuityView)
)


class Projections(ClosesApplication):
    """The views of the ledger at one database URL.

    Open with ``Projections.open(url)`` (the same URL as the ledger). Views are
    tables beside the ledger's events; each keeps its own tracking position.
    """

    def __init__(
        self,
        application: LedgerApplication,
        store: ViewStore,
        storage: Storage,
        batch_size: int,
    ) -> None:
        self._app = application
        self._store = store
        self.storage = storage
        self._active = ActiveContextsView()
        self._audit = AuditView()
        self._continuity = ContinuityView()
        self.views: dict[str, View] = {
            view.name: view for view in (self._active, self._audit, self._continuity)
        }
        reader = LogReader(application.recorder, application.mapper)
        self._processor = Processor(store, reader, batch_size)
        self._reader = reader

    @classmethod
    def open(
        cls, url: str | None = None, *, batch_size: int = DEFAULT_BATCH_SIZE
    ) -> Self:
        """Opens the views of the ledger at ``url``; creates their tables if need be."""
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, int)
            or batch_size < 1
        ):
            raise LedgerConfigError(
                f"batch_size={batch_size!r} must be an int of 1 or more"
            )
        resolved = resolve_url(url)
        storage = storage_for(resolved)
        if storage.kind == "memory":
            raise ViewsNeedDurableStorage(resolved)
        application = open_application(storage)
        try:
            with storage_failures(storage):
                return cls._beside(application, storage, batch_size)
        except BaseException:
            application.close()
            raise

    @classmethod
    def _beside(
        cls, application: LedgerApplication, storage: Storage, batch_size: int
    ) -> Self:
        datastore = application.recorder.datastore  # type: ignore[attr-defined]
        if not isinstance(datastore, SQLiteDatastore | PostgresDatastore):
            raise ViewsNeedDurableStorage(storage.description)
        with setup_lock(storage):
            store = ViewStore.beside(datastore)
        projections = cls(application, store, storage, batch_size)
        for view in projections.views.values():
            projections._processor.ensure_live(view)
        return projections

    # Processing.

    @storage_errors
    def catch_up(
        self, names: Sequence[str] | None = None, *, on_batch: OnBatch | None = None
    ) -> dict[str, int]:
        """Applies every event stored now to the views; how many each applied."""
        applied = self._processor.run(self._live(names), self.head(), on_batch)
        return {name: applied[name] for name in self._selected(names)}

    @storage_errors
    def follow(
        self,
        stop: threading.Event,
        names: Sequence[str] | None = None,
        *,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        on_batch: OnBatch | None = None,
    ) -> None:
        """Keeps the views up to date as events arrive, until ``stop`` is set."""
        self._processor.follow(self._live(names), stop, poll_seconds, on_batch)

    @storage_errors
    def rebuild(
        self, names: Sequence[str] | None = None, *, on_batch: OnBatch | None = None
    ) -> dict[str, int]:
        """Builds the views anew from the first event and swaps them in; readers
        see the old views until then. How many events each applied."""
        views = [self.views[name] for name in self._selected(names)]
        applied: Counter[str] = self._processor.rebuild(views, on_batch)
        return {view.name: applied[view.name] for view in views}

    @storage_errors
    def wait(self, position: int, timeout: float = 10.0) -> None:
        """Blocks until every view has applied ``position`` (TimeoutError if not)."""
        if position <= 0:
            return
        for view in self.views.values():
            key = Generation(view.name, rebuild=False).key
            self._store.recorder.wait(key, position, timeout=timeout)

    # State of the processing.

    @storage_errors
    def head(self) -> int:
        """The position of the ledger's last event."""
        return self._reader.head()

    @storage_errors
    def status(self) -> list[ViewStatus]:
        head = self.head()
        result = []
        with self._store.reading() as tx:
            for name in self.views:
                position = self._store.position(tx, Generation(name, rebuild=False).key)
                result.append(
                    ViewStatus(
                        view=name, position=position, head=head, lag=head - position
                    )
                )
        return result

    # Queries of the active contexts view.

    @storage_errors
    def active_contexts(
        self, user_id: str | None = None, *, limit: int = 1000
    ) -> list[Context]:
        """The user's active contexts (everyone's, up to ``limit``), oldest first."""
        with self._store.reading() as tx:
            names = self._names(self._active)
            if user_id is None:
                return self._active.everyone(tx, names, limit)
            user = validation.identifier("user_id", user_id)
            return self._active.by_user(tx, names, user, limit)

    @storage_errors
    def active_context(self, context_id: str) -> Context | None:
        with self._store.reading() as tx:
            return self._active.by_context(tx, self._names(self._active), context_id)

    @storage_errors
    def count_active(self, user_id: str | None = None) -> int:
        with self._store.reading() as tx:
            return self._active.count(tx, self._names(self._active), user_id)

    @storage_errors
    def expiring_before(self, at: datetime) -> list[Context]:
        """Active contexts whose expiry time is before ``at``, soonest first."""
        when = validation.aware_time("at", at)
        with self._store.reading() as tx:
            return self._active.expiring_before(tx, self._names(self._active), when)

    # Queries of the audit view.

    @storage_errors
    def audit_rows(
        self,
        user_id: str | None = None,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        kind: EventKind | None = None,
    ) -> list[AuditRow]:
        """Events in ledger order, by user, period (since inclusive, until
        exclusive) and kind; each filter is optional."""
        start = None if since is None else validation.aware_time("since", since)
        end = None if until is None else validation.aware_time("until", until)
        chosen = None if kind is None else validation.event_kind(kind)
        with self._store.reading() as tx:
            return self._audit.query(
                tx,
                self._names(self._audit),
                user_id=user_id,
                since=start,
                until=end,
                kind=chosen,
            )

    @storage_errors
    def count_audit(self) -> int:
        with self._store.reading() as tx:
            return self._audit.count(tx, self._names(self._audit))

    # Queries of the continuity view.

    @storage_errors
    def continuity(self, user_id: str | None = None) -> ContinuityFigures:
        """One user's continuity figures, or the totals over all users."""
        with self._store.reading() as tx:
            names = self._names(self._continuity)
            return self._continuity.figures(tx, names, user_id)

    # Checking.

    @storage_errors
    def verify(self, names: Sequence[str] | None = None) -> dict[str, list[str]]:
        """Compares each view with a replay of the ledger up to the view's position;
        the differences per view (empty lists when all are equal)."""
        found: dict[str, list[str]] = {}
        for name in self._selected(names):
            view = self.views[name]
            with self._store.reading() as tx:
                position = self._store.position(tx, Generation(name, rebuild=False).key)
                events = self._reader.events(0, position, self._processor.batch_size)
                found[name] = view.differences(tx, self._names(view), events)
        return found

    def _names(self, view: View) -> dict[str, str]:
        return view.names(self._store.dialect, Generation(view.name, rebuild=False))

    def _selected(self, names: Sequence[str] | None) -> list[str]:
        if not names:
            return list(self.views)
        known = tuple(self.views)
        for name in names:
            if name not in self.views:
                raise UnknownView(name, known)
        return list(dict.fromkeys(names))

    def _live(self, names: Sequence[str] | None) -> list[Target]:
        return [
            Target(self.views[name], Generation(name, rebuild=False))
            for name in self._selected(names)
        ]
