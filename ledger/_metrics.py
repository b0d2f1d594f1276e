"""Prometheus figures of the ledger and its views, when ``prometheus-client`` is
installed (``pip install 'ctxledger[metrics]'``); without it every function here
does nothing. docs/operations/monitoring.md holds the one table of them all.

Recorded in the default registry, or under prometheus_client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR`` set before the process starts) in that directory's
files, which ``ledger.metrics_exposition`` and ``serve`` add up over the processes
(ledger/_exposition.py). Names as Prometheus exposes them:

- ``ctxledger_commands_total{command, outcome}``: commands by name (open_context,
  update_context, clear_context, clear_user, expire_due, forget_user,
  forget_inactive) and outcome: ``ok``, ``refused`` (a LedgerError: bad input,
  not found, limit, conflict, corrupted) or ``error`` (the database failed:
  StorageUnavailable, or anything else);
- ``ctxledger_refusals_total{error}``: refused commands by error type;
- ``ctxledger_events_appended_total{kind}``: events stored, by kind;
- ``ctxledger_evictions_total``: contexts the ledger cleared to make room for a
  new one (``on_limit="evict"``), also counted as ``cleared`` events above;
- ``ctxledger_conflict_retries_total``: saves retried after another process won;
- ``ctxledger_command_duration_seconds{command}``: a latency histogram;
- ``ctxledger_feeds_open``: change feeds open (``livesum``: over the living
  processes); ``ctxledger_feeds_fell_behind_total``: times a feed's consumer
  left more than FEED_BUFFER events untaken, so that feed read the store by
  itself;
- ``ctxledger_view_position{view}``, ``ctxledger_view_head`` and
  ``ctxledger_view_lag_events{view}``: where each view is, the log's head, and how
  many events are stored after the view's position (set by ``record_views``;
  ``livemostrecent``: the value last set by a living process);
- ``ctxledger_safe_head_wait_seconds``: how long a reader of the log on
  PostgreSQL (views, change feed, expiry index) waited at the safe head for
  transactions that began before its read to end, observed only when it had to
  wait (a caller's transaction held open, with or without the ledger's events in
  it, delays readers, never writers); ``ctxledger_safe_head_timeouts_total``:
  reads that gave up (SafeHeadTimeout).

A sharded ledger (users spread over several PostgreSQL databases) records the
figures above as before, summed over its shards, so dashboards and alerts on them
keep working unchanged, and the same figures by shard id in families of their own
(a family keeps one set of labels, so a single database's series stay exactly as
they were):

- ``ctxledger_shard_commands_total{shard, command, outcome}`` and
  ``ctxledger_shard_command_duration_seconds{shard, command}``: the commands each
  shard ran (set by ``label_shard`` on each shard's ledger);
- ``ctxledger_shard_directory_reads_total``: queries of the shard directory for
  routing (a cold cache costs one per user);
- ``ctxledger_shard_view_position{shard, view}``, ``ctxledger_shard_view_head{shard}``
  and ``ctxledger_shard_view_lag_events{shard, view}``: each view on each shard's
  log, and ``ctxledger_shard_reachable{shard}`` (1 or 0) as the views last found
  it (set by ``record_shard_views``; ``livemostrecent`` like the views' own). The
  views' figures without a shard are then sums over the shards (head minus
  position is still the lag).

Counters and histograms add up over every process that ever wrote to the
multiprocess directory, which is why it starts empty with each deployment.
"""

import atexit
import functools
import time
from collections.abc import Callable, Iterable
from typing import Any, ParamSpec, Protocol, TypeVar

from ledger import _exposition as exposition
from ledger.errors import LedgerConfigError, LedgerError, StorageUnavailable

P = ParamSpec("P")
T = TypeVar("T")

prometheus_client: Any
try:
    import prometheus_client
except ImportError:  # the metrics extra is not installed
    prometheus_client = None

# Under the multiprocess mode a gauge of the views holds the value last set by any
# living process: every process that sets it reads the same log, so the latest
# reading is the truest, and a stopped worker's figures leave with it.
VIEW_GAUGE_MODE = "livemostrecent"
# /metrics is served to this machine only unless an operator names another address.
DEFAULT_HOST = "127.0.0.1"
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# A reader waits from a millisecond (a writer committing) to the safe head's
# timeout (30 s: a transaction left open).
WAIT_BUCKETS = (0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ViewFigures(Protocol):
    """What ``record_views`` reads of a view's status."""

    @property
    def view(self) -> str: ...
    @property
    def position(self) -> int: ...
    @property
    def head(self) -> int: ...
    @property
    def lag(self) -> int: ...


class _Figures:
    def __init__(self, client: Any) -> None:
        self._command_figures(client)
        self._feed_figures(client)
        self._view_figures(client)
        self._reader_figures(client)
        self._shard_figures(client)

    def _command_figures(self, client: Any) -> None:
        """The commands: how many, their outcomes, what they stored, how long."""
        self.commands = client.Counter(
            "ctxledger_commands",
            "Commands of the ledger, by name and outcome.",
            ["command", "outcome"],
        )
        self.refusals = client.Counter(
            "ctxledger_refusals", "Refused commands, by error type.", ["error"]
        )
        self.events = client.Counter(
            "ctxledger_events_appended", "Events stored, by kind.", ["kind"]
        )
        self.evictions = client.Counter(
            "ctxledger_evictions",
            "Contexts evicted to make room for a new one (on_limit='evict').",
        )
        self.retries = client.Counter(
            "ctxledger_conflict_retries",
            "Saves retried because another process changed the user first.",
        )
        self.latency = client.Histogram(
            "ctxledger_command_duration_seconds",
            "How long commands take, by name.",
            ["command"],
            buckets=LATENCY_BUCKETS,
        )

    def _feed_figures(self, client: Any) -> None:
        """The change feeds: how many are open, how often one fell behind."""
        self.feeds_open = client.Gauge(
            "ctxledger_feeds_open",
            "Change feeds open (under the multiprocess mode: summed over the "
            "living processes).",
            multiprocess_mode="livesum",
        )
        self.feeds_behind = client.Counter(
            "ctxledger_feeds_fell_behind",
            "Times a feed's consumer left too many events untaken, so the feed "
            "read the store by itself until it caught up.",
        )

    def _view_figures(self, client: Any) -> None:
        """The views: where each stands against the log's head."""
        self.view_position = client.Gauge(
            "ctxledger_view_position",
            "The last position each view applied.",
            ["view"],
            multiprocess_mode=VIEW_GAUGE_MODE,
        )
        self.view_head = client.Gauge(
            "ctxledger_view_head",
            "The ledger log's head position.",
            multiprocess_mode=VIEW_GAUGE_MODE,
        )
        self.view_lag = client.Gauge(
            "ctxledger_view_lag_events",
            "Events stored after each view's position.",
            ["view"],
            multiprocess_mode=VIEW_GAUGE_MODE,
        )

    def _reader_figures(self, client: Any) -> None:
        """The log's readers on PostgreSQL: their waits at the safe head."""
        self.safe_head_wait = client.Histogram(
            "ctxledger_safe_head_wait_seconds",
            "How long readers of the log waited for transactions older than "
            "their read to end (only reads that had to wait).",
            buckets=WAIT_BUCKETS,
        )
        self.safe_head_timeouts = client.Counter(
            "ctxledger_safe_head_timeouts",
            "Reads of the log that gave up waiting for older transactions to end.",
        )

    def _shard_figures(self, client: Any) -> None:
        """A sharded ledger's commands and views by shard, and its directory reads."""
        self.shard_commands = client.Counter(
            "ctxledger_shard_commands",
            "Commands of a sharded ledger, by shard, name and outcome.",
            ["shard", "command", "outcome"],
        )
        self.shard_latency = client.Histogram(
            "ctxledger_shard_command_duration_seconds",
            "How long commands of a sharded ledger take, by shard and name.",
            ["shard", "command"],
            buckets=LATENCY_BUCKETS,
        )
        self.directory_reads = client.Counter(
            "ctxledger_shard_directory_reads",
            "Queries of the shard directory made to route users.",
        )
        self.shard_view_position = client.Gauge(
            "ctxledger_shard_view_position",
            "The last position of each shard's log each view applied.",
            ["shard", "view"],
            multiprocess_mode=VIEW_GAUGE_MODE,
        )
        self.shard_view_head = client.Gauge(
            "ctxledger_shard_view_head",
            "Each shard's log head position.",
            ["shard"],
            multiprocess_mode=VIEW_GAUGE_MODE,
        )
        self.shard_view_lag = client.Gauge(
            "ctxledger_shard_view_lag_events",
            "Events stored on each shard after each view's position there.",
            ["shard", "view"],
            multiprocess_mode=VIEW_GAUGE_MODE,
        )
        self.shard_reachable = client.Gauge(
            "ctxledger_shard_reachable",
            "1 if the views could read the shard's log when last asked, else 0.",
            ["shard"],
            multiprocess_mode=VIEW_GAUGE_MODE,
        )


def _start() -> _Figures | None:
    """The figures, in files under the multiprocess mode (this process's live
    gauges let go when it exits)."""
    if prometheus_client is None:
        return None
    if exposition.writes_files():
        atexit.register(exposition.forget_this_process)
    return _Figures(prometheus_client)


_FIGURES = _start()
_SHARD = "_metrics_shard"
"""The attribute that names the shard a ledger serves (set by ``label_shard``)."""


def enabled() -> bool:
    """Whether figures are recorded (prometheus-client is installed)."""
    return _FIGURES is not None


class _Series:
    """The series of one command (on one shard), looked up once: a lookup per call
    costs more than the count itself."""

    def __init__(self, counter: Any, histogram: Any, *labels: str) -> None:
        self.outcomes = {
            outcome: counter.labels(*labels, outcome)
            for outcome in ("ok", "refused", "error")
        }
        self.latency = histogram.labels(*labels)

    def record(self, outcome: str, seconds: float) -> None:
        self.outcomes[outcome].inc()
        self.latency.observe(seconds)


def metered(command: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Counts and times each call of a command method; by shard too when the
    ledger is a shard's (``label_shard``)."""

    def decorate(method: Callable[P, T]) -> Callable[P, T]:
        if _FIGURES is None:
            return method
        figures = _FIGURES
        totals = _Series(figures.commands, figures.latency, command)
        shards: dict[str, _Series] = {}

        def record(ledger: object, outcome: str, seconds: float) -> None:
            totals.record(outcome, seconds)
            shard = getattr(ledger, _SHARD, None)
            if shard is not None:
                series = shards.get(shard)
                if series is None:
                    series = shards[shard] = _Series(
                        figures.shard_commands, figures.shard_latency, shard, command
                    )
                series.record(outcome, seconds)

        @functools.wraps(method)
        def call(*args: P.args, **kwargs: P.kwargs) -> T:
            started = time.perf_counter()
            outcome = "error"
            try:
                result = method(*args, **kwargs)
            except StorageUnavailable:
                raise  # the database: outcome "error"
            except LedgerError as refused:
                outcome = "refused"
                figures.refusals.labels(type(refused).__name__).inc()
                raise
            else:
                outcome = "ok"
                return result
            finally:
                record(
                    args[0] if args else None, outcome, time.perf_counter() - started
                )

        return call

    return decorate


def label_shard(ledger: object, shard_id: int) -> None:
    """Marks ``ledger`` as the ledger of shard ``shard_id`` of a sharded ledger:
    its commands are counted by shard as well."""
    setattr(ledger, _SHARD, str(shard_id))


def count_directory_read() -> None:
    """One query of the shard directory to route a user."""
    if _FIGURES is not None:
        _FIGURES.directory_reads.inc()


_EVENT_SERIES: dict[str, Any] = {}


def count_events(kinds: Iterable[str]) -> None:
    if _FIGURES is not None:
        for kind in kinds:
            series = _EVENT_SERIES.get(kind)
            if series is None:
                series = _EVENT_SERIES[kind] = _FIGURES.events.labels(kind)
            series.inc()


def count_evictions(evicted: int) -> None:
    if _FIGURES is not None and evicted:
        _FIGURES.evictions.inc(evicted)


def count_retry() -> None:
    if _FIGURES is not None:
        _FIGURES.retries.inc()


def feeds_opened(change: int) -> None:
    """``change`` feeds opened (negative: closed) in this process."""
    if _FIGURES is not None:
        _FIGURES.feeds_open.inc(change)


def count_feed_behind() -> None:
    if _FIGURES is not None:
        _FIGURES.feeds_behind.inc()


def record_safe_head_wait(seconds: float, *, timed_out: bool = False) -> None:
    """A reader of the log waited ``seconds`` at the safe head, and gave up if
    ``timed_out``."""
    if _FIGURES is not None:
        _FIGURES.safe_head_wait.observe(seconds)
        if timed_out:
            _FIGURES.safe_head_timeouts.inc()


def record_views(statuses: Iterable[ViewFigures]) -> None:
    """Sets the views' gauges from ``Projections.status()`` (a sharded ledger's:
    summed over its shards)."""
    if _FIGURES is None:
        return
    for status in statuses:
        _FIGURES.view_position.labels(status.view).set(status.position)
        _FIGURES.view_lag.labels(status.view).set(status.lag)
        _FIGURES.view_head.set(status.head)


def record_shard_views(shard_id: int, statuses: Iterable[ViewFigures]) -> None:
    """Sets the by-shard views' gauges from the statuses of one shard's log; a
    status with ``reachable`` False keeps the shard's last figures."""
    if _FIGURES is None:
        return
    shard = str(shard_id)
    for status in statuses:
        reachable = bool(getattr(status, "reachable", True))
        _FIGURES.shard_reachable.labels(shard).set(1 if reachable else 0)
        if reachable:
            _FIGURES.shard_view_position.labels(shard, status.view).set(status.position)
            _FIGURES.shard_view_lag.labels(shard, status.view).set(status.lag)
            _FIGURES.shard_view_head.labels(shard).set(status.head)


def serve(port: int, host: str = DEFAULT_HOST) -> None:
    """Serves ``/metrics`` on ``port`` of ``host`` (this machine only, unless told
    otherwise) from a daemon thread: this process's figures, or under the
    multiprocess mode every process's; LedgerConfigError if the metrics extra is
    not installed."""
    if prometheus_client is None:
        msg = (
            "serving metrics needs prometheus-client: pip install 'ctxledger[metrics]'"
        )
        raise LedgerConfigError(msg)
    try:
        prometheus_client.start_http_server(
            port, addr=host, registry=exposition.scrape_registry()
        )
    except OSError as error:
        msg = (
            f"cannot serve metrics on port {port} of {host}: {error}; choose a free "
            "port and an address of this machine"
        )
        raise LedgerConfigError(msg) from error
