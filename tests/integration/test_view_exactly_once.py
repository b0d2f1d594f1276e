"""Each event is applied to each view once: by two workers at once, and by a
projection worker killed at any instant, which resumes with nothing lost or repeated."""

import random
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger import ContextLedger
from projections import Projections
from tests.helpers import CTXLEDGER, chat

KILLS = 12


@pytest.fixture
def ledger(durable_url: str) -> Iterator[ContextLedger]:
    with ContextLedger.open(durable_url) as opened:
        yield opened


def fill(url: str, messages: int) -> None:
    rng = random.Random(3)
    with ContextLedger.open(url) as ledger:
        for n in range(messages):
            user, thread = f"u{rng.randrange(40)}", f"t{rng.randrange(3)}"
            context = ledger.open_context(user, thread, run_id=f"r{n}")
            if rng.random() < 0.2:
                ledger.clear_context(user, context.context_id)


def _wait_for_progress(url: str, before: int, worker: subprocess.Popen[bytes]) -> None:
    """Until the views' positions add up to more than ``before`` (or the worker
    ended, or 60 s passed)."""
    deadline = time.monotonic() + 60
    with Projections.open(url) as views:
        while True:
            total = sum(s.position for s in views.status())
            if total > before or worker.poll() is not None:
                return
            if time.monotonic() > deadline:
                return
            time.sleep(0.02)


@pytest.mark.slow
def test_a_worker_killed_many_times_resumes_exactly(
    durable_url: str, tmp_path: Path
) -> None:
    fill(durable_url, 3000)
    rng = random.Random(11)
    command = [CTXLEDGER, "--db", durable_url, "project", "--batch-size", "1"]
    positions, progress = [0], 0
    for _ in range(KILLS):
        worker = subprocess.Popen(
            command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        # Kill it at a random instant after it has started applying events, however
        # long the process takes to start on a loaded machine.
        _wait_for_progress(durable_url, progress, worker)
        time.sleep(rng.uniform(0.0, 0.3))
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        with Projections.open(durable_url) as views:
            after = [s.position for s in views.status()]
        positions.append(min(after))
        progress = sum(after)

    finished = subprocess.run(command, cwd=tmp_path, capture_output=True, check=False)

    assert finished.returncode == 0, finished.stderr
    with (
        Projections.open(durable_url) as views,
        ContextLedger.open(durable_url) as ledger,
    ):
        head = views.head()
        killed_mid_run = [p for p in positions[1:] if 0 < p < head]
        assert len(set(killed_mid_run)) >= KILLS // 2, positions
        assert views.verify() == {"active": [], "audit": [], "continuity": []}
        assert views.count_audit() == head
        kinds = Counter(
            event.kind for u in range(40) for event in ledger.history(f"u{u}")
        )
        totals = views.continuity()
        assert (totals.created, totals.reused, totals.cleared) == (
            kinds["created"],
            kinds["reused"],
            kinds["cleared"],
        )


def test_two_workers_at_once_apply_each_event_once(
    durable_url: str, ledger: ContextLedger
) -> None:
    chat(ledger, messages=20)
    workers = [Projections.open(durable_url, batch_size=3) for _ in range(2)]
    threads = [threading.Thread(target=w.catch_up) for w in workers]

    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert workers[0].count_audit() == workers[0].head()
    assert workers[0].verify() == {"active": [], "audit": [], "continuity": []}
    for worker in workers:
        worker.close()
