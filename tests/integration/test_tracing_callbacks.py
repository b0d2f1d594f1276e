"""A ledger call made by the caller's own code while the ledger calls it back
(``verify_chain``'s ``on_page``) is a call of its own: its own span, a child
of the outer call's, and its figures counted there, not in the outer span."""

from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan

from ledger import ContextLedger
from ledger._sharded import ShardedLedger
from tests.spans import Recorder, recorder

USER = "user-5f2c81d9"
THREAD = "thread-77ab30"


@pytest.fixture
def spans() -> Iterator[Recorder]:
    with recorder().listening() as listening:
        yield listening


def _verify_opening_a_context_on_the_first_page(
    ledger: ContextLedger, spans: Recorder
) -> list[ReadableSpan]:
    ledger.open_context(USER, THREAD)
    spans.exporter.clear()
    pages: list[int] = []

    def on_page(events: int) -> None:
        if not pages:
            ledger.open_context(USER, "opened while verifying")
        pages.append(events)

    ledger.verify_chain(on_page=on_page)
    assert pages
    return spans.ledger_spans()


def _attributes(span: ReadableSpan) -> dict[str, object]:
    return dict(span.attributes or {})


def test_a_call_made_by_a_callback_has_its_own_span_beneath_the_outer_one(
    durable_url: str, spans: Recorder
) -> None:
    with ContextLedger.open(durable_url) as ledger:
        opened, verified = _verify_opening_a_context_on_the_first_page(ledger, spans)

    assert opened.name == "ctxledger.open_context"
    assert verified.name == "ctxledger.verify_chain"
    assert opened.parent is not None
    assert opened.parent.span_id == verified.context.span_id
    assert _attributes(opened)["ctxledger.events_appended"] == 1
    assert _attributes(verified)["ctxledger.events_appended"] == 0


@pytest.mark.postgres
def test_a_callback_of_a_call_across_shards_gets_spans_for_its_calls(
    sharded_url: str, spans: Recorder
) -> None:
    with ContextLedger.open(sharded_url) as ledger:
        assert isinstance(ledger, ShardedLedger)
        opened, verified = _verify_opening_a_context_on_the_first_page(ledger, spans)
        shard = ledger.shard_of(USER)

    assert opened.name == "ctxledger.open_context"
    assert opened.parent is not None
    assert opened.parent.span_id == verified.context.span_id
    assert _attributes(opened)["ctxledger.events_appended"] == 1
    assert _attributes(opened)["ctxledger.shard"] == shard
    assert _attributes(verified)["ctxledger.events_appended"] == 0
    assert "ctxledger.shard" not in _attributes(verified)
