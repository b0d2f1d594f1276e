"""A projection worker killed at any instant resumes with nothing lost or repeated."""

import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from ledger import ContextLedger
from projections import Projections
from tests.test_cli import CTXLEDGER

KILLS = 12


def fill(url: str, messages: int) -> None:
    rng = random.Random(3)
    with ContextLedger.open(url) as ledger:
        for n in range(messages):
            user, thread = f"u{rng.randrange(40)}", f"t{rng.randrange(3)}"
            context = ledger.open_context(user, thread, run_id=f"r{n}")
            if rng.random() < 0.2:
                ledger.clear_context(user, context.context_id)


@pytest.mark.slow
def test_a_worker_killed_many_times_resumes_exactly(
    durable_url: str, tmp_path: Path
) -> None:
    fill(durable_url, 3000)
    rng = random.Random(11)
    command = [CTXLEDGER, "--db", durable_url, "project", "--batch-size", "1"]
    positions = []
    for _ in range(KILLS):
        worker = subprocess.Popen(
            command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(rng.uniform(0.35, 0.75))
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        with Projections.open(durable_url) as views:
            positions.append(min(s.position for s in views.status()))

    finished = subprocess.run(command, cwd=tmp_path, capture_output=True, check=False)

    assert finished.returncode == 0, finished.stderr
    with (
        Projections.open(durable_url) as views,
        ContextLedger.open(durable_url) as ledger,
    ):
        head = views.head()
        killed_mid_run = [p for p in positions if 0 < p < head]
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
