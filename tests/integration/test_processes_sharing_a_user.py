"""Processes that write one user's threads at once (a server's workers, each
given some of the user's sockets) lose nothing and double nothing."""

import multiprocessing
from collections import Counter

import pytest

from ledger import ContextLedger

PROCESSES = 2
SHARED_THREADS = 4
CALLS = 60
WORKER_TIMEOUT_SECONDS = 300

Results = dict[str, tuple[str, str | None]]


def chat(url: str, worker: int) -> Results:
    """Every process makes the same shared calls, in the same order (a request
    delivered to both workers), each followed by a call of its own on its own
    thread and a repeat of that call; returns each request's context and run id."""
    results: Results = {}
    with ContextLedger.open(url) as ledger:
        for n in range(CALLS):
            shared = ledger.open_context(
                "alice",
                f"shared-{n % SHARED_THREADS}",
                run_id=f"run-{n}",
                request_id=f"shared-{n}",
            )
            results[f"shared-{n}"] = (shared.context_id, shared.run_id)
            request = f"own-{worker}-{n}"
            for key in (request, f"{request} again"):
                own = ledger.open_context(
                    "alice", f"own-{worker}", run_id=f"run-{n}", request_id=request
                )
                results[key] = (own.context_id, own.run_id)
    return results


def _run(url: str) -> list[Results]:
    context = multiprocessing.get_context("spawn")
    with context.Pool(PROCESSES) as pool:
        return pool.starmap_async(
            chat, [(url, worker) for worker in range(PROCESSES)]
        ).get(timeout=WORKER_TIMEOUT_SECONDS)


@pytest.mark.slow
def test_processes_writing_one_users_threads_lose_nothing_and_double_nothing(
    durable_url: str,
) -> None:
    ContextLedger.open(durable_url).close()

    results = _run(durable_url)

    with ContextLedger.open(durable_url) as ledger:
        history = ledger.history("alice")
    requests = Counter(event.details.get("request_id") for event in history)
    shared = {key for key in results[0] if key.startswith("shared-")}
    own = {
        key
        for result in results
        for key in result
        if key.startswith("own-") and not key.endswith(" again")
    }
    assert [event.version for event in history] == list(range(1, len(history) + 1))
    assert set(requests) == shared | own
    assert set(requests.values()) == {1}
    assert sum(event.kind == "created" for event in history) == (
        SHARED_THREADS + PROCESSES
    )


@pytest.mark.slow
def test_processes_racing_on_one_request_id_return_the_same_result_and_so_do_repeats(
    durable_url: str,
) -> None:
    ContextLedger.open(durable_url).close()

    first, second = _run(durable_url)

    shared = [key for key in first if key.startswith("shared-")]
    assert len(shared) == CALLS
    assert [first[key] for key in shared] == [second[key] for key in shared]
    for result in (first, second):
        repeated = [key for key in result if key.endswith(" again")]
        assert len(repeated) == CALLS
        assert [result[key] for key in repeated] == [
            result[key.removesuffix(" again")] for key in repeated
        ]
