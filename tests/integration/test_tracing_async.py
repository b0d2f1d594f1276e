"""Through AsyncContextLedger, a call's span belongs to the awaiting task's
trace, although the call runs in a thread of the ledger's pool."""

import asyncio
from collections import Counter
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import ReadableSpan

from ledger import AsyncContextLedger, ContextNotFound
from tests.spans import Recorder, recorder


@pytest.fixture
def spans() -> Iterator[Recorder]:
    with recorder().listening() as listening:
        yield listening


def _parent_of(span: ReadableSpan) -> int | None:
    return None if span.parent is None else span.parent.span_id


def test_a_call_is_a_child_of_the_awaiting_tasks_span(
    durable_url: str, spans: Recorder
) -> None:
    async def main() -> int:
        async with AsyncContextLedger.open(durable_url) as ledger:
            with spans.tracer().start_as_current_span("request") as request:
                await ledger.open_context("user-a", "thread")
                with pytest.raises(ContextNotFound):
                    await ledger.clear_context("user-a", "no-such-context")
            return request.get_span_context().span_id

    request = asyncio.run(main())
    opened, refused = spans.ledger_spans()

    assert opened.name == "ctxledger.open_context"
    assert refused.name == "ctxledger.clear_context"
    assert _parent_of(opened) == request
    assert _parent_of(refused) == request


def test_concurrent_tasks_each_keep_their_own_calls(
    durable_url: str, spans: Recorder
) -> None:
    async def task(ledger: AsyncContextLedger, calls: int) -> tuple[int, int | None]:
        with spans.tracer().start_as_current_span(f"request {calls}") as request:
            for thread in range(calls):
                await ledger.open_context(f"user-{calls}", f"thread-{thread}")
            return request.get_span_context().span_id, calls

    async def main() -> list[tuple[int, int | None]]:
        async with AsyncContextLedger.open(durable_url, max_threads=2) as ledger:
            return await asyncio.gather(*(task(ledger, n) for n in (1, 2, 3, 4)))

    calls_by_request = dict(asyncio.run(main()))
    parents = Counter(_parent_of(span) for span in spans.ledger_spans())

    assert parents == calls_by_request
