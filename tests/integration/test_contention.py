"""A ledger whose cached state of a user is often stale (other processes write the
user too) catches up from the store before its commands decide, so those writes
cost it no more retries; once nobody else writes the user, it decides on the
cache again."""

from prometheus_client import REGISTRY

from ledger import ContextLedger


def _retries() -> float:
    return REGISTRY.get_sample_value("ctxledger_conflict_retries_total") or 0.0


def _alternate(first: ContextLedger, second: ContextLedger, rounds: int) -> None:
    for n in range(rounds):
        first.open_context("alice", "t", run_id=f"r{n}")
        second.open_context("alice", "u", run_id=f"r{n}")


def test_two_processes_writing_one_user_in_turns_soon_stop_retrying(
    durable_url: str,
) -> None:
    with (
        ContextLedger.open(durable_url) as first,
        ContextLedger.open(durable_url) as second,
    ):
        before = _retries()
        _alternate(first, second, 10)  # each write makes the other's cache stale
        learning = _retries() - before

        _alternate(first, second, 10)
        history = first.history("alice")

    assert learning > 0
    assert _retries() - before == learning
    assert [event.version for event in history] == list(range(1, 41))


def test_a_user_nobody_else_writes_any_more_is_decided_on_the_cache_again(
    durable_url: str,
) -> None:
    with (
        ContextLedger.open(durable_url) as first,
        ContextLedger.open(durable_url) as second,
    ):
        _alternate(first, second, 10)
        for n in range(20):
            first.open_context("alice", "t", run_id=f"alone {n}")  # nobody else
        second.open_context("alice", "u", run_id="again")
        before = _retries()

        first.open_context("alice", "t", run_id="stale again")

    assert _retries() - before == 1
