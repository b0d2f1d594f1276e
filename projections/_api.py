"""``Projections``: run, rebuild, check and query the views of one ledger."""

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ledger import _metrics as metrics
from ledger._domain import validation
from ledger.errors import StorageUnavailable
from ledger.log_source import (
    LogSource,
    locate,
    sharded_position,
    storage_failures,
)
from projections._active import ActiveContextsView
from projections._applying import OnBatch, Target
from projections._audit import AuditView
from projections._continuity import ContinuityView
from projections._errors import (
    PositionsPerShard,
    UnknownView,
    ViewNotBuilt,
    ViewsNeedDurableStorage,
)
from projections._models import ViewStatus
from projections._processing import Processor
from projections._queries import ViewQueries
from projections._reader import LogReader
from projections._store import ViewStore
from projections._view import Generation, View, live_tables_exist, missing_columns

DEFAULT_BATCH_SIZE = 1000
DEFAULT_POLL_SECONDS = 0.2
FIRST_RETRY_SECONDS = 0.5
LONGEST_RETRY_SECONDS = 30.0
FIGURES_SECONDS = 1.0
"""How often ``follow`` sets the views' metrics (status() counts the lag)."""
OnFailure = Callable[[StorageUnavailable, float], None]
"""Called by ``follow`` with a database failure and the seconds until it retries."""
_log = logging.getLogger(__name__)
VIEW_NAMES = tuple(
    view.name for view in (ActiveContextsView, AuditView, ContinuityView)
)


class Projections(ViewQueries):
    """The views of the ledger at one database URL.

    Open with ``Projections.open(url)`` (the same URL as the ledger). Views are
    tables beside the ledger's events; each keeps its own tracking position. On
    a ledger with shards it is a ``ShardedProjections`` (``projections._sharded``).
    """

    def __init__(
        self,
        source: LogSource,
        store: ViewStore,
        batch_size: int,
        built: Sequence[str] = VIEW_NAMES,
    ) -> None:
        self._app = source  # StorageClient closes it
        self._source = source
        self._store = store
        self.storage = source.storage
        self._active = ActiveContextsView()
        self._audit = AuditView()
        self._continuity = ContinuityView()
        self.views: dict[str, View] = {
            view.name: view for view in (self._active, self._audit, self._continuity)
        }
        reader = LogReader(source)
        self._processor = Processor(store, reader, batch_size)
        self._reader = reader
        self._built = frozenset(built)
        self._missing: dict[str, list[str]] = {}
        """Views whose tables lack columns of this release (readers only)."""

    @classmethod
    def open(
        cls,
        url: str | None = None,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        create: bool = True,
        master_key: bytes | str | None = None,
    ) -> "Projections":
        """Opens the views of the ledger at ``url``; creates their tables if need be.

        With ``create=False`` nothing is created or changed: a URL that holds no
        ledger raises LedgerNotFound, and a view whose tables were never built
        raises ViewNotBuilt when it is read (``status`` shows it at position 0).
        ``master_key`` (else CTXLEDGER_MASTER_KEY) opens the data keys, as for
        ``ContextLedger.open``: the views seal personal data with them.

        When the PostgreSQL database at ``url`` holds a shard directory, the
        views' tables stay there (shard 0) and they read every shard's log.
        """
        size = validation.positive_int("batch_size", batch_size, setting=True)
        where = locate(url)
        if not where.durable:
            raise ViewsNeedDurableStorage(where.url)
        source = LogSource.open(where, create=create, master_key=master_key)
        try:
            with storage_failures(where.storage):
                urls = source.shard_urls(where.url)
                if urls is None:
                    return cls._beside(source, size, create)
                from projections._sharded import sharded_views  # noqa: PLC0415

                return sharded_views(
                    where,
                    urls,
                    source,
                    batch_size=size,
                    create=create,
                    master_key=master_key,
                )
        except BaseException:
            source.close()
            raise

    @classmethod
    def _beside(
        cls, source: LogSource, batch_size: int, create: bool, **extra: Any
    ) -> "Projections":
        """The views over ``source``'s database (``extra``: the subclass's)."""
        if not create:
            store = ViewStore.beside(source, create=False)
            reader = cls(source, store, batch_size, built=(), **extra)
            with store.reading() as tx:
                if tx.dialect.exists(tx.cursor, source.tracking_table):
                    reader._built = frozenset(
                        view.name
                        for view in reader.views.values()
                        if live_tables_exist(tx, view)
                    )
                    # Built by an earlier release and not opened to write since:
                    # not readable until `ctxledger project` adds the columns.
                    live = {n: Generation(n, rebuild=False) for n in reader._built}
                    reader._missing = {
                        name: missing
                        for name in reader._built
                        if (
                            missing := missing_columns(
                                tx, reader.views[name], live[name]
                            )
                        )
                    }
                    reader._built -= reader._missing.keys()
            return reader
        with source.setup_lock():
            store = ViewStore.beside(source)
        projections = cls(source, store, batch_size, **extra)
        projections._set_up()
        return projections

    def _set_up(self) -> None:
        """Creates the views' live tables (and upgrades those of a release before)."""
        for view in self.views.values():
            self._processor.ensure_live(view)

    # Processing.

    def catch_up(
        self, names: Sequence[str] | None = None, *, on_batch: OnBatch | None = None
    ) -> dict[str, int]:
        """Applies every event stored now to the views; how many each applied."""
        head = self.head()
        applied = self._processor.run(self._live(names), head, on_batch)
        self._source.extend_tree(head)  # the log's Merkle tree, for checkpoints
        if metrics.enabled():
            metrics.record_views(self.status())
        return {name: applied[name] for name in self._selected(names)}

    def follow(
        self,
        stop: threading.Event,
        names: Sequence[str] | None = None,
        *,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        on_batch: OnBatch | None = None,
        on_failure: OnFailure | None = None,
    ) -> dict[str, int]:
        """Keeps the views up to date as events arrive, until ``stop`` is set;
        then each view's position as of the last poll that succeeded (none: {}).

        It looks for new events every ``poll_seconds``, on every backend
        (PostgreSQL appends send no NOTIFY). A failure of the database does not
        end it: it is reported (``on_failure(error, pause)``, else a warning
        logged) and processing goes on from the views' tracked positions after a
        pause that doubles from 0.5 s up to 30 s while the failures go on. A data
        problem ends it: UndecodableEvent, ViewCannotApply, LedgerCorrupted.
        """
        targets = self._live(names)
        report = on_failure or log_failure
        pause = FIRST_RETRY_SECONDS
        reached: dict[str, int] = {}
        figures_due = 0.0
        while not stop.is_set():
            try:
                with storage_failures(self.storage):
                    head = self._reader.head()
                    _, reached = self._processor.advance(targets, head, on_batch, stop)
                    self._source.extend_tree(head)
                    if metrics.enabled() and time.monotonic() >= figures_due:
                        metrics.record_views(self.status())
                        figures_due = time.monotonic() + FIGURES_SECONDS
            except StorageUnavailable as failure:
                report(failure, pause)
                self._source.check_connections()  # not one broken connection a try
                stop.wait(pause)
                pause = min(pause * 2, LONGEST_RETRY_SECONDS)
                continue
            pause = FIRST_RETRY_SECONDS
            stop.wait(poll_seconds)
        return reached

    def rebuild(
        self, names: Sequence[str] | None = None, *, on_batch: OnBatch | None = None
    ) -> dict[str, int]:
        """Builds the views anew from the first event and swaps them in; readers
        see the old views until then. How many events each applied."""
        views = [self.views[name] for name in self._selected(names)]
        try:
            applied = self._rebuilt(views, on_batch)
        finally:  # the views swapped in, even if another could not be rebuilt
            with self._store.reading() as tx:
                self._built |= {v.name for v in views if live_tables_exist(tx, v)}
            for view in views:
                self._missing.pop(view.name, None)
        return {view.name: applied[view.name] for view in views}

    def _rebuilt(self, views: list[View], on_batch: OnBatch | None) -> Counter[str]:
        return self._processor.rebuild(views, on_batch)

    def wait(
        self, position: int | str | Mapping[int, int], timeout: float = 10.0
    ) -> None:
        """Blocks until every view has applied ``position`` (TimeoutError if not):
        a position of the log, or one per shard as ``heads()`` gives it (here
        ``{0: position}``) or as a change feed writes it (``"0:120"``)."""
        at = by_shard(position)
        if at.keys() - {0}:
            raise PositionsPerShard("wait() of a ledger without shards")
        if at.get(0, 0) <= 0:
            return
        for view in self.views.values():
            self._names(view)
            key = Generation(view.name, rebuild=False).key
            self._store.recorder.wait(key, at[0], timeout=timeout)

    # State of the processing.

    def head(self) -> int:
        """The position of the ledger's last event."""
        return self._reader.head()

    def heads(self) -> dict[int, int]:
        """Each shard's head position, by shard id (``{0: head()}`` here): what
        ``wait`` takes on any ledger."""
        return {0: self._reader.head()}

    def status(self) -> list[ViewStatus]:
        """Each view's position, the ledger's head position, and how many events
        are stored after the view's position (positions can skip numbers)."""
        head = self.head()
        with self._store.reading() as tx:
            positions = {
                name: self._store.position(tx, Generation(name, rebuild=False).key)
                if name in self._built
                else 0
                for name in self.views
            }
        return [
            ViewStatus(
                view=name,
                position=position,
                head=head,
                lag=self._source.count_after(position) if position < head else 0,
            )
            for name, position in positions.items()
        ]

    # Checking.

    def verify(self, names: Sequence[str] | None = None) -> dict[str, list[str]]:
        """Compares each view with a replay of the ledger; the differences per view
        (empty lists when all are equal).

        Rows are compared up to the view's position. A view whose position is
        below the log's head (read first) is not equal to the ledger: its first
        difference says how many events it is behind.
        """
        head = self.head()
        found: dict[str, list[str]] = {}
        for name in self._selected(names):
            view = self.views[name]
            if name not in self._built:
                found[name] = [str(ViewNotBuilt(name, self._missing.get(name, ())))]
                continue
            with self._store.reading() as tx:
                position = self._store.position(tx, Generation(name, rebuild=False).key)
                events = self._reader.events(0, position, self._processor.batch_size)
                rows = view.differences(tx, self._names(view), events)
            found[name] = [*self._behind(position, head), *rows]
        return found

    def _behind(self, position: int, head: int) -> list[str]:
        if position >= head:
            return []
        lag = self._source.count_after(position)
        return [
            f"behind the ledger by {lag} event(s): at position {position}, the head "
            f"is {head}; run `ctxledger project` (if it stops, its error names the "
            "event)"
        ]

    def _selected(self, names: Sequence[str] | None) -> list[str]:
        known = tuple(self.views)
        if names is None or (isinstance(names, Sequence) and not names):
            return list(self.views)
        if isinstance(names, str):
            chosen = [names]
        elif isinstance(names, Sequence):
            chosen = list(names)
        else:  # a number, a set, a generator: not a list of names
            raise UnknownView(repr(names), known)
        for name in chosen:
            if not isinstance(name, str) or name not in self.views:
                raise UnknownView(name, known)
        return list(dict.fromkeys(chosen))

    def _live(self, names: Sequence[str] | None) -> list[Target]:
        for name in self._selected(names):
            self._names(self.views[name])
        return [
            Target(self.views[name], Generation(name, rebuild=False))
            for name in self._selected(names)
        ]


def by_shard(position: int | str | Mapping[int, int]) -> dict[int, int]:
    """A position to wait for, by shard: an int is shard 0's; a change feed's
    text names each shard (a shard it reached at its head: nothing to wait for)."""
    if isinstance(position, Mapping):
        return {int(shard): int(at) for shard, at in position.items()}
    if isinstance(position, str):
        parts = sharded_position("position", position)
        return {shard: at for shard, at in parts.items() if at is not None}
    return {0: position}


def log_failure(failure: StorageUnavailable, pause: float) -> None:
    _log.warning("%s; trying again in %g s", failure, pause)
