"""The Prometheus exposition of the ledger's figures (and the application's own):
this process's, or, under prometheus_client's multiprocess mode
(``PROMETHEUS_MULTIPROC_DIR`` set before the process starts), those of every
process that writes to that directory, added up.

Under that mode the gauges of a ``live`` mode (``ctxledger_feeds_open`` and the
views' figures) count only processes that are alive: a process lets its own go
when it exits, and each scrape lets go of those whose process died without
exiting (killed, crashed), which is what gunicorn's ``child_exit`` hook does
elsewhere and uvicorn has no hook for.
"""

import logging
import os
import re
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path
from typing import Any

from ledger.errors import LedgerConfigError

prometheus_client: Any
try:
    import prometheus_client
    import prometheus_client.exposition
    import prometheus_client.multiprocess
    import prometheus_client.values
except ImportError:  # the metrics extra is not installed
    prometheus_client = None

MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
_OLD_VARIABLE = "prometheus_multiproc_dir"  # prometheus_client still reads it
_LIVE_GAUGE_FILE = re.compile(r"gauge_live[a-z]+_(?P<pid>[0-9]+)\.db")
_log = logging.getLogger(__name__)


def _client() -> Any:
    if prometheus_client is None:
        msg = (
            "exposing metrics needs prometheus-client: pip install 'ctxledger[metrics]'"
        )
        raise LedgerConfigError(msg)
    return prometheus_client


def _configured_dir() -> Path | None:
    """The directory the variable names, None when it is unset; LedgerConfigError
    when it is not a directory."""
    value = os.environ.get(MULTIPROCESS_VARIABLE, os.environ.get(_OLD_VARIABLE))
    if value is None or prometheus_client is None:
        return None
    if not value or not Path(value).is_dir():
        msg = (
            f"{MULTIPROCESS_VARIABLE} is {value!r}, which is not a directory: create "
            "it, empty, before the processes start (or unset it for the figures of "
            "each process alone)"
        )
        raise LedgerConfigError(msg)
    return Path(value)


def _set_too_late() -> bool:
    """prometheus_client was imported before the variable was set: this process
    keeps its figures in memory, not in the directory's files."""
    return bool(
        prometheus_client.values.ValueClass is prometheus_client.values.MutexValue
    )


_TOO_LATE = (
    f"{MULTIPROCESS_VARIABLE} was set after prometheus_client was imported, so this "
    "process keeps its figures in memory, out of the other processes' exposition"
)


def writes_files() -> bool:
    """Whether this process's figures go to the multiprocess directory (checked as
    ``ledger`` is imported): LedgerConfigError when the variable names no
    directory; False, with a warning, when it was set too late."""
    if _configured_dir() is None:
        return False
    if _set_too_late():
        _log.warning("%s; set it in the environment the process starts with", _TOO_LATE)
        return False
    return True


def multiprocess_dir() -> Path | None:
    """The directory of prometheus_client's multiprocess mode, None when the mode
    is off; LedgerConfigError when it is set but unusable (not a directory, or
    set too late for this process to write there)."""
    directory = _configured_dir()
    if directory is not None and _set_too_late():
        msg = (
            f"{_TOO_LATE}, so its exposition would leave out its own figures: set "
            "it in the environment the process starts with (or unset it)"
        )
        raise LedgerConfigError(msg)
    return directory


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: no signal, only the check that pid exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def forget_dead_processes(directory: Path) -> None:
    """Lets go of the live gauges of processes in ``directory`` that no longer run.

    A process is found by its id in this process's pid namespace: every process
    that writes to the directory must be in it (docs/operations/monitoring.md),
    as the files' names, one pid each, require anyway: ``os.kill`` cannot tell
    a process of another namespace from a dead one."""
    if os.name != "posix":  # os.kill(pid, 0) checks a pid on POSIX only
        return
    for path in directory.glob("gauge_live*_*.db"):
        found = _LIVE_GAUGE_FILE.fullmatch(path.name)
        if found is not None and not _alive(int(found["pid"])):
            with suppress(FileNotFoundError):  # a scrape elsewhere took it first
                prometheus_client.multiprocess.mark_process_dead(
                    int(found["pid"]), str(directory)
                )


def forget_this_process() -> None:
    """Lets go of this process's live gauges (it is exiting); nothing to do when
    the directory is gone by then (removed as the deployment stops)."""
    with suppress(LedgerConfigError, OSError):
        directory = multiprocess_dir()
        if directory is not None:
            prometheus_client.multiprocess.mark_process_dead(
                os.getpid(), str(directory)
            )


class _LivingProcesses:
    """Every process's figures in the multiprocess directory, read at each scrape
    after the live gauges of dead processes are let go."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._files = prometheus_client.multiprocess.MultiProcessCollector(
            None, path=str(directory)
        )

    def collect(self) -> Iterable[Any]:
        forget_dead_processes(self._directory)
        collected: Iterable[Any] = self._files.collect()
        return collected


def scrape_registry() -> Any:
    """The registry a scrape reads: the default one, or under the multiprocess
    mode a registry of every process's files."""
    client = _client()
    directory = multiprocess_dir()
    if directory is None:
        return client.REGISTRY
    registry = client.CollectorRegistry()
    registry.register(_LivingProcesses(directory))
    return registry


def metrics_exposition(accept: str | None = None) -> tuple[bytes, str]:
    """The body and content type to serve at ``/metrics``: every metric of this
    process's default registry, or under prometheus_client's multiprocess mode
    (``PROMETHEUS_MULTIPROC_DIR``) of every process writing to its directory,
    added up. ``accept`` is the scrape's Accept header (OpenMetrics when asked
    for). LedgerConfigError without prometheus-client (``ctxledger[metrics]``)."""
    registry = scrape_registry()
    encode, content_type = prometheus_client.exposition.choose_encoder(accept or "")
    body: bytes = encode(registry)
    return body, str(content_type)
