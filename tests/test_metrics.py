"""Prometheus figures: commands by name and outcome, events by kind, refusals,
conflict retries and latency; the views' position, head and lag; /metrics from
``ctxledger project --follow --metrics-port``. Without prometheus-client nothing
changes and nothing fails."""

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from ledger import ContextLedger, InvalidContextInput


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _change(read: Callable[[], float], act: Callable[[], object]) -> float:
    before = read()
    act()
    return read() - before


def test_commands_are_counted_by_name_and_outcome(durable_url: str) -> None:
    with ContextLedger.open(durable_url) as ledger:
        opened = _change(
            lambda: _value(
                "ctxledger_commands_total", command="open_context", outcome="ok"
            ),
            lambda: [ledger.open_context("alice", f"t{n % 2}") for n in range(3)],
        )
        created = _value("ctxledger_events_appended_total", kind="created")
        reused = _value("ctxledger_events_appended_total", kind="reused")
        timed = _value(
            "ctxledger_command_duration_seconds_count", command="open_context"
        )
        refused = _value("ctxledger_refusals_total", error="InvalidContextInput")
        with pytest.raises(InvalidContextInput):
            ledger.open_context("none", "t")
        ledger.clear_user("alice")

        assert opened == 3
        assert _value("ctxledger_refusals_total", error="InvalidContextInput") == (
            refused + 1
        )
        assert (
            _value("ctxledger_commands_total", command="clear_user", outcome="ok") >= 1
        )
        assert _value("ctxledger_events_appended_total", kind="cleared") >= 2
        assert created >= 2
        assert reused >= 1
        assert (
            _value("ctxledger_command_duration_seconds_count", command="open_context")
            == timed + 1
        )


def test_a_conflict_with_another_process_is_counted_as_a_retry(
    sqlite_url: str,
) -> None:
    with (
        ContextLedger.open(sqlite_url) as first,
        ContextLedger.open(sqlite_url) as second,
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
