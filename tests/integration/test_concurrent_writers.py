"""Many processes and threads on one database keep the invariants."""

import multiprocessing
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from ledger import ContextLedger, LedgerEvent
from ledger._domain.hashing import GENESIS_HASH, chain_hash
from tests.helpers import USERS, hammer

PROCESSES = 4
CALLS_PER_PROCESS = 150
WORKER_TIMEOUT_SECONDS = 300


def _violations(history: list[LedgerEvent]) -> list[str]:
    """Broken invariants found by replaying one user's stored events."""
    problems = []
    active: dict[str, str] = {}
    previous = GENESIS_HASH
    for expected_version, event in enumerate(history, start=1):
        if event.version != expected_version:
            problems.append(f"version {event.version}, expected {expected_version}")
        if event.prev_hash != previous:
            problems.append(f"chain broken at version {event.version}")
        previous = chain_hash(event.model_dump(mode="json"))
        if event.kind == "created":
            if event.thread_id in active:
                problems.append(f"second active context for {event.thread_id}")
            active[event.thread_id] = event.context_id
        elif active.get(event.thread_id) != event.context_id:
            problems.append(f"{event.kind} of an inactive context at {event.version}")
        elif event.kind in ("cleared", "expired"):
            del active[event.thread_id]
    return problems


def _run_processes(url: str) -> Counter[str]:
    context = multiprocessing.get_context("spawn")
    with context.Pool(PROCESSES) as pool:
        # The workers also race to create the tables: several processes starting
        # on an empty database at once is part of what is tested.
        results = pool.starmap_async(
            hammer, [(url, seed, CALLS_PER_PROCESS) for seed in range(PROCESSES)]
        ).get(timeout=WORKER_TIMEOUT_SECONDS)
    total: Counter[str] = Counter()
    for result in results:
        total.update(result)
    return total


def _check_store(url: str, done: Counter[str]) -> None:
    with ContextLedger.open(url) as ledger:
        histories = {user: ledger.history(user) for user in USERS}
    kinds = Counter(event.kind for h in histories.values() for event in h)

    assert {user: _violations(h) for user, h in histories.items()} == {
        user: [] for user in USERS
    }
    assert kinds["created"] + kinds["reused"] == done["opened"]
    assert kinds["updated"] == done["updated"]
    assert kinds["cleared"] == done["cleared"]
    assert done["conflicts"] == 0


@pytest.mark.slow
def test_processes_on_one_database_lose_nothing_and_never_fork_a_thread(
    durable_url: str,
) -> None:
    done = _run_processes(durable_url)

    assert done["opened"] > PROCESSES * CALLS_PER_PROCESS // 2
    _check_store(durable_url, done)


def test_threads_sharing_one_ledger_keep_the_invariants(ledger_url: str) -> None:
    with ContextLedger.open(ledger_url) as ledger:

        def work(seed: int) -> dict[str, int]:
            return _hammer_shared(ledger, seed)

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(work, range(8)))
        histories = {user: ledger.history(user) for user in USERS}

    opened = sum(result["opened"] for result in results)
    kinds = Counter(event.kind for h in histories.values() for event in h)
    assert {user: _violations(h) for user, h in histories.items()} == {
        user: [] for user in USERS
    }
    assert kinds["created"] + kinds["reused"] == opened == 8 * 60


def _hammer_shared(ledger: ContextLedger, seed: int) -> dict[str, int]:
    opened = 0
    for call in range(60):
        user, thread = USERS[(seed + call) % 3], f"t{call % 2}"
        ledger.open_context(user, thread, metadata={"seed": seed})
        opened += 1
    return {"opened": opened}
