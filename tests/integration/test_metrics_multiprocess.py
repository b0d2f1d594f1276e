"""Metrics under prometheus_client's multiprocess mode: the figures of every
process that writes to PROMETHEUS_MULTIPROC_DIR add up in one exposition
(``ledger.metrics_exposition`` and ``ctxledger project --metrics-port``), and the
live gauges count living processes only.

The variable must be set before prometheus_client is imported, so every process
that records or exposes here is a subprocess started with it."""

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from ledger import ContextLedger, metrics_exposition
from tests.metrics_pages import free_port, samples, scrape, start_following, stop
from tests.metrics_pages import value as sample

WRITE = """
import sys
from ledger import ContextLedger
with ContextLedger.open(sys.argv[1]) as ledger:
    for n in range(int(sys.argv[3])):
        ledger.open_context(sys.argv[2], f"t{n}")
"""
EXPOSE = """
import sys
from ledger import metrics_exposition
body, content_type = metrics_exposition()
sys.stdout.write(content_type + "\\n" + body.decode())
"""
HOLD_VIEWS = """
import sys
from projections import Projections
with Projections.open(sys.argv[1]) as views:
    views.catch_up()
    print("ready", flush=True)
    sys.stdin.readline()
"""
HOLD_FEED = """
import sys
from ledger import ContextLedger
with ContextLedger.open(sys.argv[1]) as ledger, ledger.changes("alice"):
    print("ready", flush=True)
    sys.stdin.readline()
"""
HOLD_VIEW_FIGURES = """
import sys
from types import SimpleNamespace
from ledger import _metrics
position, head = int(sys.argv[1]), int(sys.argv[2])
_metrics.record_views(
    SimpleNamespace(view=view, position=position, head=head, lag=head - position)
    for view in ("active", "audit", "continuity")
)
print("ready", flush=True)
sys.stdin.readline()
"""
HOLD_SHARD_VIEWS = """
import sys
from types import SimpleNamespace
from ledger import _metrics
position, head = int(sys.argv[1]), int(sys.argv[2])
status = SimpleNamespace(
    view="audit", position=position, head=head, lag=head - position, reachable=True
)
_metrics.record_shard_views(1, [status])
print("ready", flush=True)
sys.stdin.readline()
"""


def _environment(directory: Path) -> dict[str, str]:
    return {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}


def _python(directory: Path, script: str, *args: str) -> str:
    """Runs ``script`` in a process of the multiprocess mode; its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=_environment(directory),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _exposition(directory: Path) -> str:
    """One scrape of every process's figures, from a process of its own."""
    _, page = _python(directory, EXPOSE).split("\n", 1)
    return page


@contextmanager
def _holding(directory: Path, script: str, *args: str) -> Iterator[int]:
    """A process that runs ``script`` up to its ``ready`` and waits there (ends
    when the block does); yields its pid."""
    process = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        env=_environment(directory),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        assert process.stdout.readline() == "ready\n"
        yield process.pid
    finally:
        if process.poll() is None:
            with suppress(BrokenPipeError):
                process.stdin.write("\n")
        with suppress(BrokenPipeError):  # a killed process's pipe is broken
            process.stdin.close()
        process.wait(30)
        process.stdout.close()


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    """An empty directory for the multiprocess mode, as each deployment starts."""
    folder = tmp_path / "prometheus"
    folder.mkdir()
    return folder


def test_the_commands_of_two_processes_add_up_in_one_exposition(
    sqlite_url: str, directory: Path
) -> None:
    _python(directory, WRITE, sqlite_url, "alice", "3")
    _python(directory, WRITE, sqlite_url, "bob", "4")

    content_type, page = _python(directory, EXPOSE).split("\n", 1)

    assert content_type.startswith("text/plain")
    opened = {"command": "open_context"}
    assert sample(page, "ctxledger_commands_total", **opened, outcome="ok") == 7
    assert sample(page, "ctxledger_events_appended_total", kind="created") == 7
    assert sample(page, "ctxledger_command_duration_seconds_count", **opened) == 7


def test_a_views_gauge_shows_the_latest_reading_of_the_living_processes(
    sqlite_url: str, directory: Path
) -> None:
    _python(directory, WRITE, sqlite_url, "alice", "3")
    with (
        _holding(directory, HOLD_VIEWS, sqlite_url),  # each view at 3, lag 0
        _holding(directory, HOLD_VIEW_FIGURES, "1", "4"),  # lower, and later
    ):
        page = _exposition(directory)

    views = ("active", "audit", "continuity")
    assert samples(page, "ctxledger_view_position") == {
        frozenset({("view", view)}): 1 for view in views
    }
    assert samples(page, "ctxledger_view_lag_events") == {
        frozenset({("view", view)}): 3 for view in views
    }
    assert samples(page, "ctxledger_view_head") == {frozenset(): 4}


def test_a_shards_views_gauges_show_the_latest_reading_of_the_living_processes(
    directory: Path,
) -> None:
    with (
        _holding(directory, HOLD_SHARD_VIEWS, "5", "9"),
        _holding(directory, HOLD_SHARD_VIEWS, "9", "9"),
    ):
        page = _exposition(directory)

    audit = {"shard": "1", "view": "audit"}
    assert samples(page, "ctxledger_shard_view_position") == {
        frozenset(audit.items()): 9
    }
    assert samples(page, "ctxledger_shard_view_lag_events") == {
        frozenset(audit.items()): 0
    }
    assert samples(page, "ctxledger_shard_view_head") == {
        frozenset({("shard", "1")}): 9
    }
    assert samples(page, "ctxledger_shard_reachable") == {
        frozenset({("shard", "1")}): 1
    }


def test_a_process_that_exits_takes_its_view_figures_along_and_leaves_its_counts(
    sqlite_url: str, directory: Path
) -> None:
    _python(directory, WRITE, sqlite_url, "alice", "2")
    with _holding(directory, HOLD_VIEWS, sqlite_url):
        while_running = _exposition(directory)

    page = _exposition(directory)

    assert sample(while_running, "ctxledger_view_head") == 2
    assert samples(page, "ctxledger_view_head") == {}
    assert samples(page, "ctxledger_view_lag_events") == {}
    opened = {"command": "open_context", "outcome": "ok"}
    assert sample(page, "ctxledger_commands_total", **opened) == 2


def test_a_killed_process_no_longer_counts_its_open_feeds(
    sqlite_url: str, directory: Path
) -> None:
    ContextLedger.open(sqlite_url).close()  # the tables exist before two start
    with (
        _holding(directory, HOLD_FEED, sqlite_url),
        _holding(directory, HOLD_FEED, sqlite_url) as doomed,
    ):
        both = _exposition(directory)
        os.kill(doomed, signal.SIGKILL)
        os.waitpid(doomed, 0)
        one = _exposition(directory)

    assert sample(both, "ctxledger_feeds_open") == 2
    assert sample(one, "ctxledger_feeds_open") == 1
    assert not list(directory.glob(f"gauge_live*_{doomed}.db"))


def test_a_multiprocess_directory_that_does_not_exist_is_a_clear_error(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import ledger"],
        env=_environment(tmp_path / "missing"),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode != 0
    assert "LedgerConfigError: PROMETHEUS_MULTIPROC_DIR is" in done.stderr
    assert "which is not a directory: create it" in done.stderr


def test_without_the_multiprocess_mode_the_exposition_is_this_processes_registry(
    sqlite_url: str,
) -> None:
    with ContextLedger.open(sqlite_url) as ledger:
        ledger.open_context("alice", "t")

    body, content_type = metrics_exposition()
    open_metrics, open_metrics_type = metrics_exposition(
        "application/openmetrics-text; version=1.0.0"
    )

    opened = {"command": "open_context", "outcome": "ok"}
    counted = REGISTRY.get_sample_value("ctxledger_commands_total", opened)
    assert sample(body.decode(), "ctxledger_commands_total", **opened) == counted
    assert content_type.startswith("text/plain; version=")
    assert open_metrics_type.startswith("application/openmetrics-text")
    assert open_metrics.endswith(b"# EOF\n")


def test_project_follow_serves_the_views_and_every_processs_counts(
    sqlite_url: str, directory: Path, tmp_path: Path
) -> None:
    _python(directory, WRITE, sqlite_url, "alice", "2")
    port = free_port()
    worker = start_following(sqlite_url, tmp_path, port, env=_environment(directory))
    try:
        page = scrape("127.0.0.1", port, 'ctxledger_view_position{view="audit"} 2.0')
    finally:
        err = stop(worker)
    after_stop = _exposition(directory)

    assert worker.returncode == 0, err
    assert samples(page, "ctxledger_view_lag_events") == {
        frozenset({("view", view)}): 0 for view in ("active", "audit", "continuity")
    }
    assert sample(page, "ctxledger_view_position", view="audit") == 2
    opened = {"command": "open_context", "outcome": "ok"}
    assert sample(page, "ctxledger_commands_total", **opened) == 2  # the writer's
    assert samples(after_stop, "ctxledger_view_position") == {}
