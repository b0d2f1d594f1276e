"""Benchmark of the auditor queries on SQLite, beside plain-sqlite3 floors.

    python -m tools.bench.audit [--user-events N] [--chain-events N]
                                [--tree-events N] [--tree-postgres-events N]
                                [--json FILE]

Part 1, one user with N events (10,000) appended through ContextLedger, so the
ledger's own snapshots are there: contexts_as_of at 300 random instants (each
answer also checked against a replay from the first event), history of all the
user's events and of a tenth of its span. The floor reads the same user's rows
with plain sqlite3 and decodes them with msgpack.

Part 2, verify_chain over M events (1,000,000) of simulated users, with their
snapshots (one per 50 events of a user, stored in format 3: verify_chain opens each
one, which authenticates it, and compares it with the event at its version, as the
one pass over the log read it; no replay), beside the floor of reading the same
rows in the same order with plain sqlite3. The machine may be shared, so the
figures are given twice: by the wall clock, and by this process's CPU time (the
``_cpu`` ones, steadier under others' load). The floor is the best of three reads.

Part 3, the log's Merkle tree and signed checkpoints, on SQLite and (its upkeep only)
PostgreSQL: ``tools.bench.tree``.
"""

import json
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import click
import msgpack
from rich.console import Console
from rich.table import Table

from ledger import ContextLedger
from ledger._domain.contexts import project_user, user_aggregate_id
from tools.bench import tree
from tools.bench.api import rss_mb
from tools.bench.views import write_events

START = datetime(2026, 1, 1, tzinfo=UTC)
QUERIES = 300


@dataclass
class UserFigures:
    events: int
    snapshots: int
    as_of_p50_ms: float
    as_of_p95_ms: float
    as_of_max_ms: float
    full_replay_ms: float
    history_all_ms: float
    history_tenth_ms: float
    floor_read_user_ms: float
    verify_chain_user_ms: float


@dataclass
class ChainFigures:
    events: int
    users: int
    snapshots: int
    verify_s: float
    verify_events_per_s: float
    floor_s: float
    floor_events_per_s: float
    ratio_to_floor: float
    verify_cpu_s: float
    floor_cpu_s: float
    ratio_to_floor_cpu: float
    rss_before_verify_mb: float
    rss_after_verify_mb: float


class StepClock:
    """A clock that moves one second per reading, so every event has its own time."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def build_user(url: str, events: int, seed: int) -> None:
    rng = random.Random(seed)
    with ContextLedger.open(url, clock=StepClock()) as ledger:
        written = 0
        while written < events:
            context = ledger.open_context(
                "auditee",
                f"thread-{rng.randrange(6)}",
                run_id=f"run-{rng.randrange(50)}",
                metadata={"turn": rng.randrange(100)},
                ttl_seconds=rng.choice([None, 60.0, 600.0]),
            )
            written += 1
            if rng.random() < 0.1:
                ledger.update_context("auditee", context.context_id, metadata={"u": 1})
                written += 1
            if rng.random() < 0.1:
                ledger.clear_context("auditee", context.context_id)
                written += 1
            if rng.random() < 0.02:
                written += ledger.expire_due()


def _ms(call: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = call()
    return (time.perf_counter() - start) * 1000, result


def _median_ms(call: Callable[[], object], runs: int = 5) -> float:
    """The median of several runs: one run is at the mercy of a shared machine."""
    return statistics.median(_ms(call)[0] for _ in range(runs))


def measure_user(path: str, events: int, seed: int) -> UserFigures:
    url = f"sqlite:///{path}"
    build_user(url, events, seed)
    rng = random.Random(seed)
    with ContextLedger.open(url) as ledger:
        history = ledger.history("auditee")
        first, last = history[0].occurred_at, history[-1].occurred_at
        span = (last - first).total_seconds()
        app = ledger._app
        stream = list(app.events_after("auditee", 0))
        timings = []
        for _ in range(QUERIES):
            at = first + timedelta(seconds=rng.uniform(0, span))
            took, contexts = _ms(partial(ledger.contexts_as_of, "auditee", at))
            # Checked against a replay from the first event, outside the timing.
            replayed = project_user(None, (e for e in stream if e.timestamp <= at))
            want = sorted(
                [] if replayed is None else replayed.live(at),
                key=lambda c: (c.created_at, c.context_id),
            )
            assert contexts == want, at  # noqa: S101
            timings.append(took)
        full = _median_ms(
            lambda: project_user(None, list(app.events_after("auditee", 0)))
        )
        history_all = _median_ms(lambda: ledger.history("auditee"))
        verify_user = _median_ms(lambda: ledger.verify_chain("auditee"))
        assert ledger.verify_chain("auditee").holds  # noqa: S101
        since = first + timedelta(seconds=span * 0.45)
        history_tenth = _median_ms(
            lambda: ledger.history(
                "auditee", since=since, until=since + timedelta(seconds=span / 10)
            )
        )
    connection = sqlite3.connect(path)
    snapshots = connection.execute("SELECT COUNT(*) FROM stored_snapshots").fetchone()
    floor = _median_ms(
        lambda: [
            msgpack.unpackb(state)
            for (state,) in connection.execute(
                "SELECT state FROM stored_events WHERE originator_id = ? "
                "ORDER BY originator_version",
                (user_aggregate_id("auditee").hex,),
            )
        ]
    )
    connection.close()
    timings.sort()
    return UserFigures(
        events=len(history),
        snapshots=snapshots[0],
        as_of_p50_ms=round(statistics.median(timings), 2),
        as_of_p95_ms=round(timings[int(len(timings) * 0.95)], 2),
        as_of_max_ms=round(timings[-1], 2),
        full_replay_ms=round(full, 1),
        history_all_ms=round(history_all, 1),
        history_tenth_ms=round(history_tenth, 1),
        floor_read_user_ms=round(floor, 1),
        verify_chain_user_ms=round(verify_user, 1),
    )


def sqlite_read_floor(path: str) -> tuple[float, float, int]:
    """Seconds (wall, CPU) to read every event row, in log order, with plain
    sqlite3: the best of three reads."""
    best_wall = best_cpu = float("inf")
    count = 0
    for _ in range(3):
        connection = sqlite3.connect(path)
        wall, cpu, count = time.perf_counter(), time.process_time(), 0
        for _row in connection.execute(
            "SELECT rowid, originator_id, originator_version, topic, state "
            "FROM stored_events ORDER BY rowid"
        ):
            count += 1
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
        connection.close()
    return best_wall, best_cpu, count


def measure_chain(path: str, events: int, seed: int) -> ChainFigures:
    url = f"sqlite:///{path}"
    written = write_events(url, events, seed, snapshots=True)
    floor_s, floor_cpu_s, counted = sqlite_read_floor(path)
    with ContextLedger.open(url) as ledger:
        rss_before = rss_mb()
        start, cpu = time.perf_counter(), time.process_time()
        report = ledger.verify_chain()
        verify_cpu_s = time.process_time() - cpu
        verify_s = time.perf_counter() - start
    if not report.holds or report.events != written or counted != written:
        msg = f"verify_chain read {report.events} of {written} events: {report.broken}"
        raise RuntimeError(msg)
    connection = sqlite3.connect(path)
    (snapshots,) = connection.execute(
        "SELECT COUNT(*) FROM stored_snapshots"
    ).fetchone()
    connection.close()
    return ChainFigures(
        events=written,
        users=len(report.users),
        snapshots=snapshots,
        verify_s=round(verify_s, 2),
        verify_events_per_s=round(written / verify_s),
        floor_s=round(floor_s, 2),
        floor_events_per_s=round(written / floor_s),
        ratio_to_floor=round(floor_s / verify_s, 3),
        verify_cpu_s=round(verify_cpu_s, 2),
        floor_cpu_s=round(floor_cpu_s, 2),
        ratio_to_floor_cpu=round(floor_cpu_s / verify_cpu_s, 3),
        rss_before_verify_mb=round(rss_before, 1),
        rss_after_verify_mb=round(rss_mb(), 1),
    )


def _render(title: str, figures: object, console: Console) -> None:
    table = Table("figure", "value", title=title)
    for name, value in asdict(figures).items():  # type: ignore[call-overload]
        table.add_row(name, f"{value:,}")
    console.print(table)


@click.command()
@click.option("--user-events", default=10_000, show_default=True)
@click.option("--chain-events", default=1_000_000, show_default=True)
@click.option("--tree-events", default=1_000_000, show_default=True, help="0 skips.")
@click.option(
    "--tree-postgres-events", default=200_000, show_default=True, help="0 skips."
)
@click.option("--seed", default=1, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def main(
    *,
    user_events: int,
    chain_events: int,
    tree_events: int,
    tree_postgres_events: int,
    seed: int,
    json_path: Path | None,
) -> None:
    """contexts_as_of, history, verify_chain and the Merkle tree, beside floors."""
    console = Console()
    with tempfile.TemporaryDirectory() as folder:
        user = measure_user(str(Path(folder) / "user.db"), user_events, seed)
        _render(f"one user, {user.events:,} events (SQLite)", user, console)
        chain = measure_chain(str(Path(folder) / "chain.db"), chain_events, seed)
        _render(f"verify_chain, {chain.events:,} events (SQLite)", chain, console)
        trees = tree.measure_tree(Path(folder), tree_events, tree_postgres_events, seed)
        tree.render(trees, console)
    if json_path is not None:
        figures = {"user": asdict(user), "chain": asdict(chain), "tree": asdict(trees)}
        json_path.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
