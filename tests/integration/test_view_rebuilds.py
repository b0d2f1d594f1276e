"""Property: for random ledger histories, a rebuild equals incremental processing."""

import tempfile
from contextlib import suppress
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import ContextLedger, LedgerError
from projections import Projections

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
