"""Prometheus figures: commands by name and outcome, events by kind, refusals,
conflict retries and latency; the views' position, head and lag; /metrics from
``ctxledger project --follow --metrics-port``. Without prometheus-client nothing
changes and nothing fails."""

import socket
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from ledger import ContextLedger, InvalidContextInput, StorageUnavailable
from projections import Projections
from tests.helpers import run
from tests.metrics_pages import free_port, scrape, start_following, stop


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
from ledger import ContextLedger, LedgerConfigError, _metrics as metrics
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


def _listening_addresses(port: int) -> set[str]:
    """The local addresses of this machine's sockets listening on TCP ``port``, as
    Linux lists them in /proc/net/tcp and tcp6 (each 32-bit word little-endian)."""
    found = set()
    for table, family in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path("/proc/net") / table
        lines = path.read_text().splitlines()[1:] if path.exists() else []
        for fields in (line.split() for line in lines):
            address, hex_port = fields[1].split(":")
            if fields[3] == "0A" and int(hex_port, 16) == port:
                words = [bytes.fromhex(address[i : i + 8]) for i in range(0, 32, 8)]
                packed = b"".join(word[::-1] for word in words)
                found.add(socket.inet_ntop(family, packed))
    return found


def test_project_follow_serves_metrics(durable_url: str, tmp_path: Path) -> None:
    with ContextLedger.open(durable_url) as ledger:
        ledger.open_context("alice", "t")
    port = free_port()
    worker = start_following(durable_url, tmp_path, port)
    try:
        applied = 'ctxledger_view_position{view="audit"} 1.0'
        page = scrape("127.0.0.1", port, until=applied)
    finally:
        err = stop(worker)

    assert 'ctxledger_view_position{view="audit"} 1.0' in page, page
    assert 'ctxledger_view_lag_events{view="active"} 0.0' in page
    assert worker.returncode == 0, err


def test_metrics_listen_on_this_machine_only_by_default(
    sqlite_url: str, tmp_path: Path
) -> None:
    port = free_port()
    worker = start_following(sqlite_url, tmp_path, port)
    try:
        page = scrape("127.0.0.1", port, until="ctxledger_view_head")
        listening = _listening_addresses(port)
    finally:
        err = stop(worker)

    assert "ctxledger_view_head" in page, err
    assert listening == {"127.0.0.1"}
    assert f"serving metrics at http://127.0.0.1:{port}/metrics" in err


def test_metrics_host_chooses_the_address_to_listen_on(
    sqlite_url: str, tmp_path: Path
) -> None:
    port = free_port()
    worker = start_following(sqlite_url, tmp_path, port, "--metrics-host", "127.0.0.2")
    try:
        page = scrape("127.0.0.2", port, until="ctxledger_view_head")
        listening = _listening_addresses(port)
    finally:
        err = stop(worker)

    assert "ctxledger_view_head" in page, err
    assert listening == {"127.0.0.2"}
    assert f"serving metrics at http://127.0.0.2:{port}/metrics" in err


def test_metrics_on_a_port_in_use_is_a_clear_error(
    sqlite_url: str, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run(
            "--db", sqlite_url, "project", "--metrics-port", str(port), cwd=tmp_path
        )

    assert done.returncode == 1
    assert "cannot serve metrics on port" in done.stderr
    assert "Traceback" not in done.stderr
