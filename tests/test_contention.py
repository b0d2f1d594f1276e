"""A ledger that lost a race for a user catches up from the store before its next
calls of that user decide, so another process's writes cost it no more retries;
a user nobody else writes is decided on the cache again."""

from prometheus_client import REGISTRY

from ledger import ContextLedger
from ledger.store import commands


def _retries() -> float:
    return REGISTRY.get_sample_value("ctxledger_conflict_retries_total") or 0.0


def test_once_both_processes_lost_a_race_their_writes_cost_no_more_retries(
    durable_url: str,
) -> None:
    with (
        ContextLedger.open(durable_url) as first,
        ContextLedger.open(durable_url) as second,
    ):
        first.open_context("alice", "t")
        second.open_context("alice", "u")
        before = _retries()
        first.open_context("alice", "t")  # stale: conflicts once
        second.open_context("alice", "u")  # stale too: conflicts once
        after_the_conflicts = _retries()

        for n in range(5):
            first.open_context("alice", "t", run_id=f"r{n}")
            second.open_context("alice", "u", run_id=f"r{n}")
        history = first.history("alice")

    assert after_the_conflicts - before == 2
    assert _retries() == after_the_conflicts
    assert [event.version for event in history] == list(range(1, 15))


def test_a_user_nobody_else_writes_goes_back_to_deciding_on_the_cache(
    durable_url: str,
) -> None:
    with (
        ContextLedger.open(durable_url) as first,
        ContextLedger.open(durable_url) as second,
    ):
        first.open_context("alice", "t")
        second.open_context("alice", "u")
        first.open_context("alice", "t")  # stale: conflicts once
        for n in range(commands.CONTENDED_CALLS):
            first.open_context("alice", "t", run_id=f"r{n}")  # nobody else writes
        second.open_context("alice", "u", run_id="again")
        before = _retries()

        first.open_context("alice", "t", run_id="stale again")

    assert _retries() - before == 1
