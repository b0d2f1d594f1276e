"""Part 3 of the auditor benchmark: the log's Merkle tree and signed checkpoints.

On SQLite, over N simulated events (``tools.bench.views.write_events``, as part 2):
maintenance, ``catch_up_tree()`` from an empty tree, beside the floor of reading
the same log rows in the same order with plain sqlite3 (the best of three reads),
by the wall clock and by CPU time; issue 23's target is at least 0.5x the floor.
Then, with the tree caught up: ``sign_checkpoint`` (20 signs, one event appended
before each so that each signs a new tree), ``LogTree.consistency_proof`` between
two random sizes and ``LogTree.inclusion_proof`` of a random leaf (200 of each,
every proof verified, the verification timed apart), and ``verify_checkpoint``,
which reads every event. On PostgreSQL, in a fresh schema dropped afterwards: the
maintenance figure beside the floor of reading the rows with plain psycopg.

Growth, on a second SQLite log grown in stretches to 10,000, 100,000, ... events
and N: at each size, the last stretch's catch-up by CPU time beside the floor of
reading the whole log, sign_checkpoint (10) and proofs (50 of each) at that size.
"""

import itertools
import random
import sqlite3
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from rich.console import Console
from rich.table import Table

from ledger import ContextLedger, write_checkpoint_key
from ledger._audit.log_tree import LogTree
from ledger._audit.merkle import verify_consistency, verify_inclusion
from tools.bench.api import POSTGRES_DSN, postgres_schema
from tools.bench.views import write_events

SIGNS = 20
PROOFS = 200
GROWTH_SIGNS = 10
GROWTH_PROOFS = 50
FIRST_DECADE = 10_000
GROWTH_HEADERS = "events|catch up|floor|sign p50|sign max|cons. p50|cons. max|incl. p50"
"""The growth table's columns, in ``GrowthFigures``' order (short, to fit 80)."""
TARGET = 0.5
"""Issue 23: tree maintenance at least this share of the floor's events/s."""
SIGNER = "tree-bench"
LOG_ORDER = (
    "SELECT {position}, originator_id, originator_version, topic, state "
    "FROM {table} ORDER BY {position}"
)
"""The log's rows in log order, as the tree reads them (a table name filled in)."""

T = TypeVar("T")


@dataclass
class MaintenanceFigures:
    """``catch_up_tree()`` from an empty tree beside the floor of reading the log."""

    backend: str
    events: int
    tree_s: float
    tree_events_per_s: float
    floor_s: float
    floor_events_per_s: float
    ratio_to_floor: float
    tree_cpu_s: float
    floor_cpu_s: float
    ratio_to_floor_cpu: float
    target_met: bool
    """Whether ``ratio_to_floor`` reaches ``TARGET``."""
    target_met_cpu: bool


@dataclass
class CheckpointFigures:
    """Latencies with the tree caught up (milliseconds, but ``verify_checkpoint``)."""

    tree_size: int
    sign_p50_ms: float
    sign_max_ms: float
    consistency_proof_p50_ms: float
    consistency_proof_max_ms: float
    consistency_verify_p50_ms: float
    consistency_verify_max_ms: float
    inclusion_proof_p50_ms: float
    inclusion_proof_max_ms: float
    verify_checkpoint_s: float
    verify_checkpoint_events_per_s: float


@dataclass
class GrowthFigures:
    """The tree at one size of a growing log: the last stretch's catch-up and the
    floor of reading the whole log (CPU µs), and latencies at that size (ms)."""

    events: int
    catch_up_cpu_us_per_event: float
    floor_cpu_us_per_row: float
    sign_p50_ms: float
    sign_max_ms: float
    consistency_proof_p50_ms: float
    consistency_proof_max_ms: float
    inclusion_proof_p50_ms: float


@dataclass
class TreeFigures:
    """Part 3's figures; None (growth: empty) where its flag skipped it."""

    sqlite: MaintenanceFigures | None
    checkpoints: CheckpointFigures | None
    postgres: MaintenanceFigures | None
    growth: list[GrowthFigures]


def _timed(call: Callable[[], T]) -> tuple[float, float, T]:
    """Wall and CPU seconds of one call, and what it returned."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = call()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def _ms(call: Callable[[], T]) -> tuple[float, T]:
    wall, _, result = _timed(call)
    return wall * 1000, result


def read_floor(connect: Callable[[], Any], query: str) -> tuple[float, float, int]:
    """Seconds (wall, CPU) to read every row of ``query`` on a plain driver's
    connection: the best of three reads; and how many rows it read."""
    best_wall = best_cpu = float("inf")
    count = 0
    for _ in range(3):
        connection = connect()
        try:
            wall, cpu, count = _timed(partial(_count_rows, connection, query))
        finally:
            connection.close()
        best_wall, best_cpu = min(best_wall, wall), min(best_cpu, cpu)
    return best_wall, best_cpu, count


def _count_rows(connection: Any, query: str) -> int:
    return sum(1 for _row in connection.execute(query))


def measure_maintenance(
    backend: str, url: str, written: int, floor: Callable[[], tuple[float, float, int]]
) -> MaintenanceFigures:
    """The floor, then ``catch_up_tree()`` over the whole log from an empty tree."""
    floor_s, floor_cpu_s, counted = floor()
    with ContextLedger.open(url) as ledger:
        tree_s, tree_cpu_s, head = _timed(ledger.catch_up_tree)
    if head.size != written or counted != written:
        msg = f"the tree took {head.size} and the floor read {counted} of {written}"
        raise RuntimeError(msg)
    ratio, ratio_cpu = floor_s / tree_s, floor_cpu_s / tree_cpu_s
    return MaintenanceFigures(
        backend=backend,
        events=written,
        tree_s=round(tree_s, 2),
        tree_events_per_s=round(written / tree_s),
        floor_s=round(floor_s, 2),
        floor_events_per_s=round(written / floor_s),
        ratio_to_floor=round(ratio, 3),
        tree_cpu_s=round(tree_cpu_s, 2),
        floor_cpu_s=round(floor_cpu_s, 2),
        ratio_to_floor_cpu=round(ratio_cpu, 3),
        target_met=ratio >= TARGET,
        target_met_cpu=ratio_cpu >= TARGET,
    )


def _sign_latencies(
    ledger: ContextLedger, key: Path, signs: int = SIGNS
) -> list[float]:
    """``signs`` signs, each after one more event, so each signs a new tree
    that must extend the one before (the first sign, untimed, may have none)."""
    context = ledger.open_context(SIGNER, "signing")
    first = ledger.sign_checkpoint(key).size
    took, sizes = [], []
    for turn in range(signs):
        ledger.update_context(SIGNER, context.context_id, metadata={"turn": turn})
        ms, signed = _ms(lambda: ledger.sign_checkpoint(key))
        took.append(ms)
        sizes.append(signed.size)
    if sizes != list(range(first + 1, first + signs + 1)):
        msg = f"the signs after tree size {first} signed the sizes {sizes}"
        raise RuntimeError(msg)
    return took


def _consistency_latencies(
    tree: LogTree, size: int, rng: random.Random, samples: int = PROOFS
) -> tuple[list[float], list[float]]:
    """Milliseconds of ``samples`` consistency proofs between two random sizes
    up to ``size``, and of their verification (the roots read untimed)."""
    proofs, checks = [], []
    for _ in range(samples):
        old, new = sorted(rng.sample(range(1, size + 1), 2))
        ms, proof = _ms(partial(tree.consistency_proof, old, new))
        roots = tree.root(old), tree.root(new)
        check, holds = _ms(partial(verify_consistency, old, new, *roots, proof))
        if not holds:
            msg = f"the consistency proof from {old} to {new} leaves does not verify"
            raise RuntimeError(msg)
        proofs.append(ms)
        checks.append(check)
    return proofs, checks


def _inclusion_latencies(
    tree: LogTree, size: int, rng: random.Random, samples: int = PROOFS
) -> list[float]:
    """Milliseconds of ``samples`` inclusion proofs of random leaves in the tree
    of ``size`` leaves, each verified untimed."""
    indexes = [rng.randrange(size) for _ in range(samples)]
    leaves, root = tree.leaf_hashes(indexes), tree.root(size)
    took = []
    for index in indexes:
        ms, proof = _ms(partial(tree.inclusion_proof, index, size))
        if not verify_inclusion(index, size, leaves[index], proof, root):
            msg = f"the inclusion proof of leaf {index} of {size} does not verify"
            raise RuntimeError(msg)
        took.append(ms)
    return took


def measure_checkpoints(url: str, folder: Path, seed: int) -> CheckpointFigures:
    """Signs, proofs and ``verify_checkpoint`` on a log whose tree is caught up."""
    key, public = write_checkpoint_key("bench.example/tree", folder / "tree-bench")
    rng = random.Random(seed)
    with ContextLedger.open(url) as ledger:
        signs = _sign_latencies(ledger, key)
        tree = LogTree(ledger._app)
        size = tree.head().size
        proofs, checks = _consistency_latencies(tree, size, rng)
        inclusion = _inclusion_latencies(tree, size, rng)
        note = ledger.latest_checkpoint() or ""
        verify_s, _, report = _timed(lambda: ledger.verify_checkpoint(note, public))
    if not report.holds or report.tree_size != size:
        msg = f"verify_checkpoint of the last checkpoint: {report}"
        raise RuntimeError(msg)
    return CheckpointFigures(
        tree_size=size,
        sign_p50_ms=_p50(signs),
        sign_max_ms=round(max(signs), 3),
        consistency_proof_p50_ms=_p50(proofs),
        consistency_proof_max_ms=round(max(proofs), 3),
        consistency_verify_p50_ms=_p50(checks),
        consistency_verify_max_ms=round(max(checks), 3),
        inclusion_proof_p50_ms=_p50(inclusion),
        inclusion_proof_max_ms=round(max(inclusion), 3),
        verify_checkpoint_s=round(verify_s, 2),
        verify_checkpoint_events_per_s=round(size / verify_s),
    )


def _p50(samples: list[float]) -> float:
    return round(statistics.median(samples), 3)


def measure_sqlite(
    path: Path, events: int, seed: int
) -> tuple[MaintenanceFigures, CheckpointFigures]:
    """Part 3 on a SQLite file: maintenance, then the checkpoint latencies."""
    url = f"sqlite:///{path}"
    written = write_events(url, events, seed)
    query = LOG_ORDER.format(position="rowid", table="stored_events")
    maintenance = measure_maintenance(
        "sqlite", url, written, lambda: read_floor(lambda: sqlite3.connect(path), query)
    )
    return maintenance, measure_checkpoints(url, path.parent, seed)


def growth_sizes(events: int) -> list[int]:
    """The sizes the growth is measured at: each decade from ``FIRST_DECADE``
    below ``events``, then ``events``."""
    decades = (FIRST_DECADE * 10**power for power in itertools.count())
    return [*itertools.takewhile(lambda size: size < events, decades), events]


def measure_growth(path: Path, events: int, seed: int) -> list[GrowthFigures]:
    """A SQLite log grown to each of ``growth_sizes(events)`` in turn, each
    stretch written by ``write_events`` with users of its own; its tree caught
    up and measured at each size (the signs add a few events of their own)."""
    url = f"sqlite:///{path}"
    key, _ = write_checkpoint_key("bench.example/growth", path.parent / "growth")
    rng, size, figures = random.Random(seed), 0, []
    for stage, target in enumerate(growth_sizes(events)):
        write_events(url, max(target - size, 1), seed + stage, prefix=f"g{stage}")
        row, size = _measure_size(url, path, key, size, rng)
        figures.append(row)
    return figures


def _measure_size(
    url: str, path: Path, key: Path, before: int, rng: random.Random
) -> tuple[GrowthFigures, int]:
    """The catch-up from ``before`` leaves and the floor, then signs and proofs;
    the figures and the tree's size after the signs."""
    query = LOG_ORDER.format(position="rowid", table="stored_events")
    with ContextLedger.open(url) as ledger:
        _, cpu_s, head = _timed(ledger.catch_up_tree)
        _, floor_cpu_s, rows = read_floor(lambda: sqlite3.connect(path), query)
        signs = _sign_latencies(ledger, key, GROWTH_SIGNS)
        tree = LogTree(ledger._app)
        size = tree.head().size
        proofs, _ = _consistency_latencies(tree, size, rng, GROWTH_PROOFS)
        inclusion = _inclusion_latencies(tree, size, rng, GROWTH_PROOFS)
    if rows != head.size:
        msg = f"the tree took {head.size} events and the floor read {rows}"
        raise RuntimeError(msg)
    return GrowthFigures(
        events=head.size,
        catch_up_cpu_us_per_event=round(cpu_s * 1e6 / (head.size - before), 2),
        floor_cpu_us_per_row=round(floor_cpu_s * 1e6 / rows, 2),
        sign_p50_ms=_p50(signs),
        sign_max_ms=round(max(signs), 3),
        consistency_proof_p50_ms=_p50(proofs),
        consistency_proof_max_ms=round(max(proofs), 3),
        inclusion_proof_p50_ms=_p50(inclusion),
    ), size


def measure_postgres(events: int, seed: int, dsn: str) -> MaintenanceFigures:
    """The maintenance figure in a fresh PostgreSQL schema, dropped afterwards."""
    with postgres_schema(dsn, "postgres") as schema:
        url = f"{dsn}?schema={schema}"
        written = write_events(url, events, seed)
        table = f'"{schema}".ctxledger_events'
        query = LOG_ORDER.format(position="notification_id", table=table)
        return measure_maintenance(
            "postgres",
            url,
            written,
            lambda: read_floor(lambda: psycopg.connect(dsn), query),
        )


def measure_tree(
    folder: Path,
    events: int,
    postgres_events: int,
    seed: int,
    dsn: str = POSTGRES_DSN,
) -> TreeFigures:
    """Part 3: SQLite over ``events`` and its growth to ``events`` (0 skips
    both), PostgreSQL's maintenance over ``postgres_events`` (0 skips)."""
    sqlite = checkpoints = postgres = None
    growth = []
    if events:
        sqlite, checkpoints = measure_sqlite(folder / "tree.db", events, seed)
        growth = measure_growth(folder / "growth.db", events, seed)
    if postgres_events:
        postgres = measure_postgres(postgres_events, seed, dsn)
    return TreeFigures(
        sqlite=sqlite, checkpoints=checkpoints, postgres=postgres, growth=growth
    )


def render(figures: TreeFigures, console: Console) -> None:
    """The maintenance table (a column per backend), the latencies table and
    the growth table (a row per size)."""
    measured = [m for m in (figures.sqlite, figures.postgres) if m is not None]
    if measured:
        table = Table("figure", *(m.backend for m in measured), title="Merkle tree")
        for name in asdict(measured[0]):
            if name != "backend":
                table.add_row(name, *(_cell(asdict(m)[name]) for m in measured))
        console.print(table)
    if figures.checkpoints is not None:
        table = Table("figure", "value", title="checkpoints and proofs (SQLite)")
        for name, value in asdict(figures.checkpoints).items():
            table.add_row(name, _cell(value))
        console.print(table)
    if figures.growth:
        _render_growth(figures.growth, console)


def _render_growth(growth: list[GrowthFigures], console: Console) -> None:
    title = "growth (SQLite): catch-up and floor in CPU µs per event, the rest in ms"
    table = Table(title=title)
    for header in GROWTH_HEADERS.split("|"):  # sizes whole, the rest wrapped at 80
        table.add_column(header, justify="right", no_wrap=header == "events")
    for row in growth:
        table.add_row(*(_cell(value) for value in asdict(row).values()))
    console.print(table)


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:,}"
