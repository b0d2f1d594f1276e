"""Property: for random histories, contexts_as_of(now) equals active_contexts(),
and every past instant agrees with the ledger's state as it was then."""

import tempfile
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path

from freezegun import freeze_time
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import Context, ContextLedger, LedgerError

USERS = ("alice", "bob")
THREADS = ("t1", "t2", "t3")
T0 = datetime(2026, 8, 1, tzinfo=UTC)

step = st.tuples(
    st.sampled_from(["open", "update", "clear", "clear_user", "expire"]),
    st.sampled_from(USERS),
    st.sampled_from(THREADS),
    st.sampled_from([None, 5.0, 40.0]),
    st.integers(0, 30),
)


Action = tuple[str, str, str, float | None, int]


def _apply(ledger: ContextLedger, action: Action) -> None:
    kind, user, thread, ttl, _ = action
    with suppress(LedgerError):
        context = ledger.get_context(user, thread)
        if kind == "open":
            ledger.open_context(user, thread, ttl_seconds=ttl, metadata={"k": thread})
        elif kind == "update" and context is not None:
            ledger.update_context(user, context.context_id, run_id="r")
        elif kind == "clear" and context is not None:
            ledger.clear_context(user, context.context_id)
        elif kind == "clear_user":
            ledger.clear_user(user)
        elif kind == "expire":
            ledger.expire_due()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, max_size=60), st.sampled_from(["sqlite", "memory"]))
def test_as_of_now_equals_active_and_the_past_is_kept(
    actions: list[Action], backend: str
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        url = (
            "memory://" if backend == "memory" else f"sqlite:///{Path(folder) / 'l.db'}"
        )
        # The state after the last event of each instant: as-of includes them all.
        seen: dict[tuple[datetime, str], list[Context]] = {}
        with ContextLedger.open(url, max_contexts_per_user=2) as ledger:
            with freeze_time(T0) as clock:
                for action in actions:
                    _apply(ledger, action)
                    now = datetime.now(tz=UTC)
                    for user in USERS:
                        active = ledger.active_contexts(user)
                        assert ledger.contexts_as_of(user, now) == active
                        seen[now, user] = active  # later events at now replace it
                    clock.tick(action[4])
            # Later, every instant seen reads back as it was.
            for (at, user), active in seen.items():
                assert ledger.contexts_as_of(user, at) == active
