"""Without OpenTelemetry, or with its API alone, the ledger works and records
nothing; a provider the application sets later is used from then on. Each in a
process of its own: a process sets its tracer provider once."""

import subprocess
import sys
from pathlib import Path


def _run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_without_opentelemetry_the_ledger_works_and_wraps_nothing(
    tmp_path: Path,
) -> None:
    script = f"""
import sys
sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
from ledger import ContextLedger, _tracing
assert not _tracing.enabled()
assert not hasattr(ContextLedger.open_context, "_ctxledger_span")
with ContextLedger.open("sqlite:///{tmp_path / "plain.db"}") as ledger:
    ledger.open_context("alice", "t")
    print("reused", ledger.open_context("alice", "t").reuse_count)
"""
    done = _run(script)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "reused 1"


def test_with_the_api_alone_nothing_is_recorded_until_a_provider_is_set(
    tmp_path: Path,
) -> None:
    script = f"""
import sys
from ledger import ContextLedger
from opentelemetry import trace

with ContextLedger.open("sqlite:///{tmp_path / "api.db"}") as ledger:
    ledger.open_context("alice", "t")
    assert "opentelemetry.sdk" not in sys.modules  # the ledger brings no SDK

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
        InMemorySpanExporter,
    )
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    ledger.open_context("alice", "t")
    print("before", len(exporter.get_finished_spans()))
    trace.set_tracer_provider(provider)
    ledger.open_context("alice", "t")
    print("after", [span.name for span in exporter.get_finished_spans()])
"""
    done = _run(script)

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "before 0",
        "after ['ctxledger.open_context']",
    ]
