"""The log's Merkle tree takes each event exactly once: a worker killed with
SIGKILL at random instants while writers append, and two workers at once, leave
a stored tree equal to one recomputed from the events, on a real SQLite file and
a real PostgreSQL schema."""

import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import pytest

from ledger import ContextLedger
from ledger._audit.merkle import MemoryTree, leaf_hash
from ledger._domain.contexts import user_aggregate_id
from ledger._domain.hashing import chain_hash
from tests.helpers import execute_sql, wait_until

USERS = tuple(f"u{n}" for n in range(12))
KILLS = 8
WORKER = """
import sys
import time

from ledger import ContextLedger

with ContextLedger.open(sys.argv[1]) as ledger:
    while True:
        ledger.catch_up_tree()
        time.sleep(0.002)
"""
"""A tree worker: catches the tree up to the log's safe head, again and again."""


class StoredTree(NamedTuple):
    """The tree's tables as stored: its size, and its leaf rows counted."""

    size: int
    leaves: int
    positions: int
    """Distinct log positions among the leaf rows."""
    last_leaf: int


def _append(url: str, events: int, seed: int) -> None:
    rng = random.Random(seed)
    with ContextLedger.open(url) as ledger:
        for n in range(events):
            ledger.open_context(rng.choice(USERS), f"t{n % 3}", run_id=f"r{seed}")


@contextmanager
def _writers_appending(url: str) -> Iterator[None]:
    """A thread appends events until the block ends."""
    stop = threading.Event()

    def write() -> None:
        rng = random.Random(5)
        with ContextLedger.open(url) as ledger:
            while not stop.is_set():
                ledger.open_context(rng.choice(USERS), "t9", metadata={"n": 1})

    writer = threading.Thread(target=write)
    writer.start()
    try:
        yield
    finally:
        stop.set()
        writer.join()


def _worker(url: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, url],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _tree_size(url: str) -> int:
    ((size,),) = execute_sql(url, "SELECT size FROM ctxledger_tree")
    return int(size)


def _stored(url: str) -> StoredTree:
    ((size, leaves, positions, last),) = execute_sql(
        url,
        "SELECT (SELECT size FROM ctxledger_tree), COUNT(*), COUNT(DISTINCT position), "
        "MAX(leaf) FROM ctxledger_tree_leaves",
    )
    return StoredTree(int(size), int(leaves), int(positions), int(last))


def _events(url: str) -> int:
    ((count,),) = execute_sql(url, "SELECT COUNT(*) FROM {events}")
    return int(count)


def _recomputed_root(url: str) -> bytes:
    """The root of a tree built in memory over every event in log order, each
    leaf the event's chain hash as the history gives it."""
    hashes: dict[tuple[uuid.UUID, int], bytes] = {}
    with ContextLedger.open(url) as ledger:
        for user in USERS:
            for event in ledger.history(user):
                chained = chain_hash(event.model_dump(mode="json"))
                hashes[user_aggregate_id(user), event.version] = bytes.fromhex(chained)
    tree = MemoryTree()
    rows = execute_sql(
        url, "SELECT originator_id, originator_version FROM {events} ORDER BY {log}"
    )
    for stream, version in rows:
        tree.append(leaf_hash(hashes[uuid.UUID(str(stream)), int(version)]))
    return tree.root()


def _assert_each_event_once(url: str) -> None:
    with ContextLedger.open(url) as ledger:
        head = ledger.catch_up_tree()
    events = _events(url)

    assert _stored(url) == StoredTree(events, events, events, events - 1)
    assert head.size == events
    assert head.root == _recomputed_root(url)


def _start_tree(url: str) -> None:
    """Creates the tree's tables (an empty log's tree)."""
    with ContextLedger.open(url) as ledger:
        assert ledger.catch_up_tree().size == 0


def _kill_after_progress(
    url: str, worker: subprocess.Popen[bytes], before: int, rng: random.Random
) -> int:
    """Kills the worker at a random instant once the tree has grown past
    ``before``; the tree's size after."""
    wait_until(
        lambda: _tree_size(url) > before or worker.poll() is not None,
        "the tree worker to take events",
    )
    time.sleep(rng.uniform(0.0, 0.15))
    worker.send_signal(signal.SIGKILL)
    worker.wait(timeout=30)
    return _tree_size(url)


@pytest.mark.slow
def test_a_tree_worker_killed_at_random_instants_takes_each_event_once(
    durable_url: str,
) -> None:
    _start_tree(durable_url)
    _append(durable_url, 600, seed=1)
    rng = random.Random(11)
    sizes = [0]

    with _writers_appending(durable_url):
        for _ in range(KILLS):
            worker = _worker(durable_url)
            sizes.append(_kill_after_progress(durable_url, worker, sizes[-1], rng))
            assert worker.returncode == -signal.SIGKILL

    assert sizes == sorted(set(sizes))  # each worker took events before its kill
    _assert_each_event_once(durable_url)


def test_two_tree_workers_at_once_take_each_event_once(durable_url: str) -> None:
    _start_tree(durable_url)
    _append(durable_url, 300, seed=2)
    workers = [_worker(durable_url) for _ in range(2)]
    try:
        _append(durable_url, 300, seed=3)
        events = _events(durable_url)
        wait_until(lambda: _tree_size(durable_url) == events, "the workers to take all")
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=30)

    assert [worker.returncode for worker in workers] == [-signal.SIGKILL] * 2
    _assert_each_event_once(durable_url)
