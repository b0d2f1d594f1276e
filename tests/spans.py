"""The spans a test's ledger calls record, through the OpenTelemetry SDK.

The API lets a process set its tracer provider once, and a pytest-xdist worker
runs many test files; so the provider is set on first use and records only
while a test listens (its sampler drops every span otherwise), and the other
tests on the worker pay no more than a sampling decision per ledger call.

So once a test on a worker has used the recorder, every later test on that
worker runs the ledger's traced path (a span started, not recorded) instead of
the untraced one: harmless as long as the provider stays non-recording for
them, which the switch ensures. The untraced path (no provider set) is tested
in processes of its own (tests/integration/test_tracing_without_sdk.py).
"""

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.trace import Link, SpanKind
from opentelemetry.util.types import Attributes


class _Switch(Sampler):
    """Records every span while on, none while off."""

    def __init__(self) -> None:
        self.on = False

    def should_sample(  # noqa: PLR0917 - the signature of the SDK's Sampler
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        decision = Decision.RECORD_AND_SAMPLE if self.on else Decision.DROP
        return SamplingResult(decision, attributes)

    def get_description(self) -> str:
        return "on while a test listens"


class Recorder:
    """The process's provider, its switch, and what it exported."""

    def __init__(self) -> None:
        self.switch = _Switch()
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider(sampler=self.switch)
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    @contextmanager
    def listening(self) -> Iterator["Recorder"]:
        self.exporter.clear()
        self.switch.on = True
        try:
            yield self
        finally:
            self.switch.on = False
            self.exporter.clear()

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def ledger_spans(self) -> list[ReadableSpan]:
        return [span for span in self.spans() if span.name.startswith("ctxledger.")]

    def tracer(self) -> trace.Tracer:
        return self.provider.get_tracer("tests")


@functools.cache
def recorder() -> Recorder:
    """This process's recorder; it sets the global tracer provider the first time."""
    made = Recorder()
    trace.set_tracer_provider(made.provider)
    if trace.get_tracer_provider() is not made.provider:
        raise RuntimeError("another tracer provider was set in this test process")
    return made


def texts_of(span: ReadableSpan) -> list[str]:
    """Every text a span carries: name, status, attributes, events and theirs."""
    texts = [span.name, span.status.description or ""]
    for attributes in [span.attributes, *(event.attributes for event in span.events)]:
        for key, value in (attributes or {}).items():
            texts.extend([key, str(value)])
    texts.extend(event.name for event in span.events)
    return texts
