"""Rebuilding the views: for random ledger histories (a property) and a busy one, a
rebuild equals incremental processing; readers see the old views until it is swapped
in; an interrupted rebuild leaves them; a rebuild beside a running worker loses and
repeats nothing; the views that reached the head are swapped in."""

import tempfile
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import ContextLedger, LedgerError
from projections import Projections, ViewCannotApply
from tests.helpers import chat
from tests.tampering import append_update_of_a_context_never_opened, execute_sql

USERS = ("alice", "bob")
THREADS = ("t1", "t2", "t3")

step = st.one_of(
    st.tuples(st.just("open"), st.sampled_from(USERS), st.sampled_from(THREADS)),
    st.tuples(st.just("update"), st.sampled_from(USERS), st.sampled_from(THREADS)),
    st.tuples(st.just("clear"), st.sampled_from(USERS), st.sampled_from(THREADS)),
    st.tuples(st.just("clear_user"), st.sampled_from(USERS), st.just("")),
    st.tuples(st.just("catch_up"), st.just(""), st.just("")),
)


def apply(
    ledger: ContextLedger, views: Projections, action: tuple[str, str, str]
) -> None:
    kind, user, thread = action
    if kind == "catch_up":
        views.catch_up()
        return
    if kind == "clear_user":
        ledger.clear_user(user)
        return
    context = ledger.get_context(user, thread)
    if kind == "open":
        ledger.open_context(user, thread, metadata={"n": len(thread)})
    elif context is not None and kind == "update":
        ledger.update_context(user, context.context_id, metadata={"k": None, "u": 1})
    elif context is not None and kind == "clear":
        ledger.clear_context(user, context.context_id)


def contents(views: Projections) -> tuple[object, ...]:
    return (
        views.active_contexts(),
        views.audit_rows(),
        [views.continuity(user) for user in USERS],
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, max_size=30), st.integers(1, 5))
def test_rebuild_equals_incremental_processing(
    actions: list[tuple[str, str, str]], batch_size: int
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'ledger.db'}"
        with (
            ContextLedger.open(url, max_contexts_per_user=2) as ledger,
            Projections.open(url, batch_size=batch_size) as views,
        ):
            for action in actions:
                with suppress(LedgerError):  # refusals (the limit) append nothing
                    apply(ledger, views, action)
            views.catch_up()
            incremental = contents(views)

            views.rebuild()

            assert contents(views) == incremental
            assert views.verify() == {"active": [], "audit": [], "continuity": []}
            for user in USERS:
                assert views.active_contexts(user) == ledger.active_contexts(user)


@pytest.fixture
def ledger(durable_url: str) -> Iterator[ContextLedger]:
    with ContextLedger.open(durable_url) as opened:
        yield opened


@pytest.fixture
def views(durable_url: str, ledger: ContextLedger) -> Iterator[Projections]:
    with Projections.open(durable_url, batch_size=4) as opened:
        yield opened


def snapshot(views: Projections) -> tuple[object, ...]:
    return (
        views.active_contexts(),
        views.audit_rows(),
        [views.continuity(f"u{user}") for user in range(3)],
        views.continuity(),
    )


def test_a_rebuild_equals_what_incremental_processing_built(
    ledger: ContextLedger, views: Projections
) -> None:
    chat(ledger)
    views.catch_up()
    incremental = snapshot(views)

    applied = views.rebuild()

    assert snapshot(views) == incremental
    assert applied == {
        "active": views.head(),
        "audit": views.head(),
        "continuity": views.head(),
    }
    assert [s.position for s in views.status()] == [views.head()] * 3


def test_readers_see_the_old_view_until_the_rebuild_is_swapped_in(
    durable_url: str, ledger: ContextLedger, views: Projections
) -> None:
    chat(ledger)
    views.catch_up()
    before = views.count_audit()
    seen_during: list[int] = []

    with Projections.open(durable_url) as reader:
        views.rebuild(
            ["audit"], on_batch=lambda _: seen_during.append(reader.count_audit())
        )

    assert seen_during
    assert set(seen_during) == {before}


def test_an_interrupted_rebuild_leaves_the_old_view_and_can_run_again(
    ledger: ContextLedger, views: Projections
) -> None:
    chat(ledger)
    views.catch_up()
    before = snapshot(views)

    def interrupt(_: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        views.rebuild(on_batch=interrupt)

    assert snapshot(views) == before
    assert views.verify() == {"active": [], "audit": [], "continuity": []}
    views.rebuild()
    assert snapshot(views) == before


def test_a_rebuild_under_a_running_worker_loses_and_repeats_nothing(
    durable_url: str, ledger: ContextLedger, views: Projections
) -> None:
    chat(ledger, messages=5)
    views.catch_up()
    with Projections.open(durable_url, batch_size=2) as worker:
        views.rebuild(on_batch=lambda _: chat(ledger, users=1, messages=1))
        chat(ledger, users=2, messages=2)

        worker.catch_up()

    assert views.count_audit() == views.head()
    assert views.verify() == {"active": [], "audit": [], "continuity": []}


def test_a_rebuild_swaps_in_the_views_that_reached_the_head(
    durable_url: str, ledger: ContextLedger, views: Projections
) -> None:
    ledger.open_context("alice", "t1")
    ledger.open_context("bob", "t1")
    views.catch_up()
    execute_sql(durable_url, "DELETE FROM ctxl_audit WHERE user_id = 'bob'")
    append_update_of_a_context_never_opened(durable_url, "mallory")  # not for active

    with pytest.raises(ViewCannotApply) as raised:
        views.rebuild()

    assert raised.value.view == "active"
    assert views.verify(["audit", "continuity"]) == {"audit": [], "continuity": []}
