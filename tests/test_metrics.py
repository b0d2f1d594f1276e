"""Prometheus figures: commands by name and outcome, events by kind, refusals,
conflict retries and latency; the views' position, head and lag; /metrics from
``ctxledger project --follow --metrics-port``. Without prometheus-client nothing
changes and nothing fails."""

import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from ledger import ContextLedger, InvalidContextInput, StorageUnavailable
from projections import Projections
from tests.helpers import CTXLEDGER, run


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _change(read: Callable[[], float], act: Callable[[], object]) -> float:
    before = read()
    act()
    return read() - before


def _figures() -> dict[str, float]:
    return {
        "open ok": _value(
            "ctxledger_commands_total", command="open_context", outcome="ok"
        ),
        "open refused": _value(
            "ctxledger_commands_total", command="open_context", outcome="refused"
        ),
        "clear_user ok": _value(
            "ctxledger_commands_total", command="clear_user", outcome="ok"
        ),
        "created": _value("ctxledger_events_appended_total", kind="created"),
        "reused": _value("ctxledger_events_appended_total", kind="reused"),
        "cleared": _value("ctxledger_events_appended_total", kind="cleared"),
        "invalid": _value("ctxledger_refusals_total", error="InvalidContextInput"),
        "timed": _value(
            "ctxledger_command_duration_seconds_count", command="open_context"
        ),
    }


def test_commands_are_counted_by_name_and_outcome(durable_url: str) -> None:
    with ContextLedger.open(durable_url) as ledger:
        before = _figures()
        for n in range(3):
            ledger.open_context("alice", f"t{n % 2}")
        with pytest.raises(InvalidContextInput):
            ledger.open_context("none", "t")
        ledger.clear_user("alice")
        after = _figures()

    assert {name: after[name] - before[name] for name in after} == {
        "open ok": 3,
        "open refused": 1,
        "clear_user ok": 1,
        "created": 2,
        "reused": 1,
        "cleared": 2,
        "invalid": 1,
        "timed": 4,
    }


def test_a_database_failure_is_an_error_not_a_refusal(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    with ContextLedger.open(f"sqlite:///{path}?timeout=1") as ledger:
        ledger.open_context("alice", "t")
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        before = _value(
            "ctxledger_commands_total", command="open_context", outcome="error"
        )
        try:
            with pytest.raises(StorageUnavailable):
                ledger.open_context("alice", "u")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        errors = (
            _value("ctxledger_commands_total", command="open_context", outcome="error")
            - before
        )

    assert errors == 1
    assert _value("ctxledger_refusals_total", error="StorageUnavailable") == 0


def test_a_conflict_with_another_process_is_counted_as_a_retry(
    durable_url: str,
) -> None:
    with (
        ContextLedger.open(durable_url) as first,
        ContextLedger.open(durable_url) as second,
    ):
        first.open_context("alice", "t")  # first caches alice
        second.open_context("alice", "u")  # and is stale from here

        retried = _change(
            lambda: _value("ctxledger_conflict_retries_total"),
            lambda: first.open_context("alice", "t"),
        )

    assert retried == 1


def test_without_prometheus_client_the_ledger_works_and_records_nothing(
    tmp_path: Path,
) -> None:
    script = f"""
import sys
sys.modules["prometheus_client"] = None  # as if the extra were not installed
from ledger import ContextLedger, LedgerConfigError, metrics
assert not metrics.enabled()
with ContextLedger.open("sqlite:///{tmp_path / "plain.db"}") as ledger:
    ledger.open_context("alice", "t")
    assert ledger.open_context("alice", "t").reuse_count == 1
try:
    metrics.serve(0)
except LedgerConfigError as error:
    print("refused:", error)
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert done.returncode == 0, done.stderr
    assert "pip install 'ctxledger[metrics]'" in done.stdout


def test_the_views_record_position_head_and_lag(durable_url: str) -> None:
    with ContextLedger.open(durable_url) as ledger:
        for n in range(5):
            ledger.open_context("alice", f"t{n}")
        with Projections.open(durable_url) as views:
            views.catch_up()
            head = views.head()
            ledger.open_context("alice", "later")
            views.catch_up(["audit"])

    assert _value("ctxledger_view_position", view="audit") == views_head(durable_url)
    assert _value("ctxledger_view_position", view="active") == head
    assert _value("ctxledger_view_lag_events", view="active") == 1
    assert _value("ctxledger_view_lag_events", view="audit") == 0
    assert _value("ctxledger_view_head") == views_head(durable_url)


def views_head(url: str) -> float:
    with Projections.open(url) as views:
        return float(views.head())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_project_follow_serves_metrics(durable_url: str, tmp_path: Path) -> None:
    with ContextLedger.open(durable_url) as ledger:
        ledger.open_context("alice", "t")
    port = _free_port()
    worker = subprocess.Popen(
        [
            CTXLEDGER,
            "--db",
            durable_url,
            "project",
            "--follow",
            "--metrics-port",
            str(port),
        ],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        page = ""
        deadline = time.monotonic() + 30
        applied = 'ctxledger_view_position{view="audit"} 1.0'
        while applied not in page and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/metrics", timeout=1
                ) as answer:
                    page = answer.read().decode()
            except OSError:
                time.sleep(0.2)
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=20)

    assert 'ctxledger_view_position{view="audit"} 1.0' in page, page
    assert 'ctxledger_view_lag_events{view="active"} 0.0' in page
    assert worker.returncode == 0, err


def test_metrics_on_a_port_in_use_is_a_clear_error(
    sqlite_url: str, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # noqa: S104  (the port the server would bind)
        taken.listen()
        port = taken.getsockname()[1]
        done = run(
            "--db", sqlite_url, "project", "--metrics-port", str(port), cwd=tmp_path
        )

    assert done.returncode == 1
    assert "cannot serve metrics on port" in done.stderr
    assert "Traceback" not in done.stderr
