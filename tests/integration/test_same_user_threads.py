"""Commands of one user take turns inside a process: its threads never fight."""

from concurrent.futures import ThreadPoolExecutor

from ledger import ContextLedger


def test_eight_threads_of_one_user_never_conflict_and_lose_nothing(
    durable_url: str,
) -> None:
    calls = 150
    with ContextLedger.open(durable_url) as ledger:

        def chat(thread: int) -> None:
            for n in range(calls):
                ledger.open_context("alice", f"t{thread}", run_id=f"r{n}")

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(chat, range(8)))  # a ConcurrencyConflict would raise here
        history = ledger.history("alice")

    assert [event.version for event in history] == list(range(1, 8 * calls + 1))
    assert sum(event.kind == "created" for event in history) == 8
    assert ledger_contexts(durable_url) == 8


def ledger_contexts(url: str) -> int:
    with ContextLedger.open(url) as ledger:
        return len(ledger.active_contexts("alice"))
