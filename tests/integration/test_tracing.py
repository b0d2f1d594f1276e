"""OpenTelemetry spans of the ledger's calls, recorded by the SDK's in-memory
exporter: one INTERNAL span per call beneath the caller's span, what it stored
and retried, its outcome, refusals recorded without their text, no user id
anywhere, the database clients' own spans beneath it, and a sharded ledger's
call as one span naming its shard."""

import inspect
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.instrumentation.sqlite3 import SQLite3Instrumentor
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from ledger import ContextLedger, ContextNotFound, write_checkpoint_key
from ledger._domain.contexts import user_aggregate_id
from ledger._sharded import ShardedLedger
from tests.spans import Recorder, recorder, texts_of

USER = "user-5f2c81d9"
THREAD = "thread-77ab30"
PUBLIC = sorted(
    name
    for name, value in inspect.getmembers(ContextLedger)
    if not name.startswith("_")
    and inspect.isfunction(value)
    and name not in {"close", "changes"}
)


@pytest.fixture
def spans() -> Iterator[Recorder]:
    with recorder().listening() as listening:
        yield listening


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, [span.name for span in spans]
    return found[0]


def _system(url: str) -> str:
    return "sqlite" if url.startswith("sqlite") else "postgresql"


@pytest.mark.parametrize("ledger_class", [ContextLedger, ShardedLedger])
def test_every_public_call_of_a_ledger_has_a_span_of_its_name(
    ledger_class: type[ContextLedger],
) -> None:
    for name in PUBLIC:
        method = getattr(ledger_class, name)

        assert getattr(method, "_ctxledger_span", None) == f"ctxledger.{name}", name


def test_each_call_is_one_internal_span_beneath_the_callers_span(
    durable_url: str, spans: Recorder
) -> None:
    with ContextLedger.open(durable_url) as ledger:
        with spans.tracer().start_as_current_span("request") as request:
            context = ledger.open_context(USER, THREAD)
            ledger.get_context(USER, THREAD)
            ledger.update_context(USER, context.context_id, metadata={"n": 1})
            ledger.history(USER)
        recorded = spans.ledger_spans()

    assert [span.name for span in recorded] == [
        "ctxledger.open_context",
        "ctxledger.get_context",
        "ctxledger.update_context",
        "ctxledger.history",
    ]
    for span in recorded:
        assert span.kind is SpanKind.INTERNAL
        assert span.parent is not None
        assert span.parent.span_id == request.get_span_context().span_id
        assert span.context.trace_id == request.get_span_context().trace_id
        assert span.instrumentation_scope is not None
        assert span.instrumentation_scope.name == "ctxledger"


def test_a_span_says_what_the_call_stored_and_how_it_ended(
    durable_url: str, spans: Recorder
) -> None:
    with ContextLedger.open(durable_url) as ledger:
        ledger.open_context(USER, THREAD)
        ledger.open_context(USER, "another thread")
        ledger.clear_user(USER)
        opened, _, cleared = spans.ledger_spans()

    assert opened.attributes == {
        "ctxledger.command": "open_context",
        "ctxledger.outcome": "ok",
        "ctxledger.events_appended": 1,
        "ctxledger.conflict_retries": 0,
        "db.system.name": _system(durable_url),
    }
    assert cleared.attributes is not None
    assert cleared.attributes["ctxledger.command"] == "clear_user"
    assert cleared.attributes["ctxledger.events_appended"] == 2
    assert cleared.status.status_code is StatusCode.UNSET


def test_a_read_appends_nothing_and_a_memory_ledger_names_no_database(
    spans: Recorder,
) -> None:
    with ContextLedger.open("memory://") as ledger:
        ledger.active_contexts(USER)
        (span,) = spans.ledger_spans()

    assert span.attributes == {
        "ctxledger.command": "active_contexts",
        "ctxledger.outcome": "ok",
        "ctxledger.events_appended": 0,
        "ctxledger.conflict_retries": 0,
    }


def test_a_refusal_is_an_error_span_with_the_exception_but_not_its_text(
    durable_url: str, spans: Recorder
) -> None:
    with ContextLedger.open(durable_url) as ledger:
        ledger.open_context(USER, THREAD)
        with pytest.raises(ContextNotFound):
            ledger.clear_context(USER, "ctx-that-never-was")
        span = _one(spans.ledger_spans(), "ctxledger.clear_context")

    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes is not None
    assert span.attributes["ctxledger.outcome"] == "refused"
    assert span.attributes["error.type"] == "ContextNotFound"
    (event,) = span.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "ledger.errors.ContextNotFound"
    assert event.attributes["exception.message"] == (
        "No active context with this id exists for this user."
    )
    assert "in clear_context" in str(event.attributes["exception.stacktrace"])
    assert not any("ctx-that-never-was" in text for text in texts_of(span))


def test_no_span_carries_a_user_id_thread_id_or_metadata(
    durable_url: str, spans: Recorder, tmp_path: Path
) -> None:
    secrets = [USER, THREAD, "run-4411", "req-9c0e", "alice@example.com"]
    stream = user_aggregate_id(USER)
    with ContextLedger.open(durable_url) as ledger:
        context = ledger.open_context(
            USER, THREAD, run_id="run-4411", request_id="req-9c0e"
        )
        ledger.update_context(
            USER, context.context_id, metadata={"email": "alice@example.com"}
        )
        with pytest.raises(ContextNotFound):
            ledger.context_history(USER, "missing-context")
        ledger.export(USER, tmp_path / "export.jsonl")
        ledger.verify_chain(USER)
        ledger.forget_user(USER)
        recorded = spans.spans()
    texts = [text for span in recorded for text in texts_of(span)]

    assert len(recorded) == 6
    for secret in [*secrets, context.context_id, str(stream), stream.hex]:
        assert not any(secret in text for text in texts), secret


def test_a_conflict_with_another_ledger_is_counted_in_the_span(
    durable_url: str, spans: Recorder
) -> None:
    with (
        ContextLedger.open(durable_url) as first,
        ContextLedger.open(durable_url) as second,
    ):
        first.open_context(USER, THREAD)  # first caches the user
        second.open_context(USER, "another thread")  # and is stale from here
        first.open_context(USER, THREAD)
        last = spans.ledger_spans()[-1]

    assert last.attributes is not None
    assert last.attributes["ctxledger.conflict_retries"] == 1
    assert last.attributes["ctxledger.events_appended"] == 1


def test_a_call_within_a_call_adds_no_span(
    durable_url: str, spans: Recorder, tmp_path: Path
) -> None:
    key, _ = write_checkpoint_key("example.com/tracing", tmp_path / "log")
    with ContextLedger.open(durable_url) as ledger:
        ledger.open_context(USER, THREAD)
        ledger.sign_checkpoints(key)  # sign_checkpoint for its one log
        recorded = spans.ledger_spans()

    assert [span.name for span in recorded] == [
        "ctxledger.open_context",
        "ctxledger.sign_checkpoints",
    ]


@pytest.fixture
def database_client_spans(durable_url: str, spans: Recorder) -> Iterator[str]:
    """The database client's own instrumentation, on for this test only."""
    if durable_url.startswith("sqlite"):
        instrumentor: SQLite3Instrumentor | PsycopgInstrumentor = SQLite3Instrumentor()
    else:
        instrumentor = PsycopgInstrumentor()
    instrumentor.instrument(tracer_provider=spans.provider)
    try:
        yield durable_url
    finally:
        instrumentor.uninstrument()


def test_the_database_clients_spans_nest_beneath_the_ledgers(
    database_client_spans: str, spans: Recorder
) -> None:
    with ContextLedger.open(database_client_spans) as ledger:
        spans.exporter.clear()  # leaves out the opening's queries
        ledger.open_context(USER, THREAD)
        recorded = spans.spans()
    call = _one(recorded, "ctxledger.open_context")
    beneath = [
        span
        for span in recorded
        if span.parent is not None
        and span.parent.span_id == call.context.span_id
        and span.kind is SpanKind.CLIENT
    ]

    assert any(
        "insert" in str((span.attributes or {}).get("db.statement", "")).lower()
        or "append" in str((span.attributes or {}).get("db.statement", "")).lower()
        for span in beneath
    ), [(span.name, span.attributes) for span in recorded]
    assert {span.context.trace_id for span in beneath} == {call.context.trace_id}


@pytest.mark.postgres
def test_a_routed_call_is_one_span_that_names_its_shard(
    sharded_url: str, spans: Recorder
) -> None:
    users = [f"{USER}-{n}" for n in range(6)]
    with ContextLedger.open(sharded_url) as ledger:
        assert isinstance(ledger, ShardedLedger)
        for user in users:
            ledger.open_context(user, THREAD)
        shards = [ledger.shard_of(user) for user in users]
        recorded = spans.ledger_spans()

    assert [span.name for span in recorded] == ["ctxledger.open_context"] * 6
    assert [(span.attributes or {})["ctxledger.shard"] for span in recorded] == shards
    assert len(set(shards)) > 1
    assert all(span.parent is None for span in recorded)


@pytest.mark.postgres
def test_a_call_across_shards_is_one_span_without_a_shard(
    sharded_url: str, spans: Recorder
) -> None:
    with ContextLedger.open(sharded_url) as ledger:
        ledger.open_context(USER, THREAD)
        spans.exporter.clear()
        ledger.expire_due()
        (span,) = spans.ledger_spans()

    assert span.name == "ctxledger.expire_due"
    assert span.attributes is not None
    assert "ctxledger.shard" not in span.attributes
    assert span.attributes["db.system.name"] == "postgresql"


@pytest.mark.postgres
def test_a_call_in_the_callers_transaction_says_so(
    postgres_url: str, postgres_dsn: str, spans: Recorder
) -> None:
    with (
        ContextLedger.open(postgres_url) as ledger,
        psycopg.connect(postgres_dsn) as connection,
    ):
        ledger.open_context(USER, THREAD, connection=connection)
        connection.commit()
        ledger.open_context(USER, THREAD)
        in_theirs, in_ours = spans.ledger_spans()

    assert in_theirs.attributes is not None
    assert in_theirs.attributes["ctxledger.caller_transaction"] is True
    assert in_theirs.attributes["ctxledger.events_appended"] == 1
    assert in_ours.attributes is not None
    assert "ctxledger.caller_transaction" not in in_ours.attributes
