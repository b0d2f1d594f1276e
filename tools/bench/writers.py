"""Benchmark of writes by 1 to 8 processes: ctxledger beside the floor and the peer.

    python -m tools.bench.writers [--backend sqlite|postgres|all] [--processes 1,2,4,8]
                                  [--calls N] [--postgres DSN] [--json FILE]

For each backend and process count, in one run: open_context on the reuse path
(each process opens its own ledger, warms its own users' contexts, then times
reuse calls), the floor (a bare single-row INSERT and COMMIT per call) and the
peer (LangGraph's checkpointer, get_tuple + put per message). Every process has its
own connection and its own users; all start together behind a barrier.
"""

import importlib.metadata
import importlib.util
import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import click
import psycopg
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ledger import ContextLedger
from tools.bench.api import (
    POSTGRES_DSN,
    create_postgres_floor,
    postgres_schema,
    sqlite_floor_connection,
)
from tools.bench.processes import Throughput, Workload, WriterFailed, run_processes
from tools.bench.workloads import Keys, LedgerReuse, PostgresFloor, SqliteFloor

PEER_PACKAGES = {
    "sqlite": ("langgraph.checkpoint.sqlite", "langgraph-checkpoint-sqlite"),
    "postgres": ("langgraph.checkpoint.postgres", "langgraph-checkpoint-postgres"),
}


@dataclass
class Row:
    """One process count: each workload's throughput, and ctxledger's over theirs."""

    processes: int
    ctxledger: Throughput
    floor: Throughput
    peer: Throughput | None
    ctxledger_over_floor: float
    ctxledger_over_peer: float | None


@dataclass
class WritersResult:
    """One backend's rows; ``peer`` names the saver, or why its column is empty."""

    backend: str
    calls_per_process: int
    peer: str
    rows: list[Row] = field(default_factory=list)
    targets: dict[str, bool | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Stores:
    """Where one backend's three workloads write, their tables already created."""

    ledger_url: str
    floor: Workload
    peer: Callable[[Keys], Workload] | None


def missing_peer(backend: str) -> str | None:
    """The package of the backend's LangGraph saver when it is not installed."""
    module, package = PEER_PACKAGES[backend]
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # no langgraph at all
        found = False
    return None if found else package


@contextmanager
def sqlite_stores(folder: Path, *, peer: bool) -> Iterator[Stores]:
    url = f"sqlite:///{folder / 'ledger.db'}"
    ContextLedger.open(url).close()
    sqlite_floor_connection(folder / "floor.db").close()
    peer_workload: Callable[[Keys], Workload] | None = None
    if peer:
        from tools.bench import peers  # noqa: PLC0415 - needs the bench extra

        peers.set_up_sqlite(folder / "peer.db")
        peer_workload = partial(peers.SqlitePeer, folder / "peer.db")
    yield Stores(url, SqliteFloor(folder / "floor.db"), peer_workload)


@contextmanager
def postgres_stores(dsn: str, *, peer: bool) -> Iterator[Stores]:
    """Three fresh schemas (ledger, floor, peer), dropped afterwards."""
    with ExitStack() as stack:
        ledger, floor, saver = (
            stack.enter_context(postgres_schema(dsn, "postgres")) for _ in range(3)
        )
        url = f"{dsn}?schema={ledger}"
        ContextLedger.open(url).close()
        with psycopg.connect(dsn) as db:
            create_postgres_floor(db, floor)
        peer_workload: Callable[[Keys], Workload] | None = None
        if peer:
            from tools.bench import peers  # noqa: PLC0415 - needs the bench extra

            conninfo = peers.saver_conninfo(dsn, saver)
            peers.set_up_postgres(conninfo)
            peer_workload = partial(peers.PostgresPeer, conninfo)
        yield Stores(url, PostgresFloor(dsn, floor), peer_workload)


def measure_row(stores: Stores, processes: int, calls: int, keys: Keys) -> Row:
    ledger = run_processes(LedgerReuse(stores.ledger_url, keys), processes, calls)
    floor = run_processes(stores.floor, processes, calls)
    peer = None
    if stores.peer is not None:
        peer = run_processes(stores.peer(keys), processes, calls)
    return Row(
        processes,
        ledger,
        floor,
        peer,
        round(ledger.ops_per_s / floor.ops_per_s, 2),
        round(ledger.ops_per_s / peer.ops_per_s, 2) if peer else None,
    )


def run_backend(
    backend: str, options: dict[str, int], counts: list[int], dsn: str, console: Console
) -> WritersResult:
    missing = missing_peer(backend)
    if missing:
        peer = f"skipped: {missing} is not installed (pip install -e '.[bench]')"
        console.print(f"{backend}: the peer column is {escape(peer)}", style="yellow")
    else:
        package = PEER_PACKAGES[backend][1]
        peer = f"{package} {importlib.metadata.version(package)}"
    result = WritersResult(backend, options["calls"], peer)
    with ExitStack() as stack:
        if backend == "sqlite":
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory()))
            stores = stack.enter_context(sqlite_stores(folder, peer=not missing))
        else:
            stores = stack.enter_context(postgres_stores(dsn, peer=not missing))
        for processes in counts:
            console.print(
                f"{backend}: {processes} processes x {options['calls']} calls"
            )
            keys = Keys(
                f"p{processes}", options["users"], options["threads"], options["seed"]
            )
            result.rows.append(measure_row(stores, processes, options["calls"], keys))
    if backend == "postgres":
        result.targets = postgres_targets_met(result.rows)
    return result


def postgres_targets_met(rows: list[Row]) -> dict[str, bool | None]:
    """The issue's targets on PostgreSQL; None where this run did not measure them."""
    by_count = {row.processes: row for row in rows}
    eight, one, four = by_count.get(8), by_count.get(1), by_count.get(4)
    return {
        "8 processes: ctxledger ops/s >= the peer's": (
            None
            if eight is None or eight.peer is None
            else eight.ctxledger.ops_per_s >= eight.peer.ops_per_s
        ),
        "8 processes: ctxledger ops/s >= 0.35x the floor's": (
            None
            if eight is None
            else eight.ctxledger.ops_per_s >= 0.35 * eight.floor.ops_per_s
        ),
        "ctxledger ops/s grows from 1 to 4 processes": (
            None
            if one is None or four is None
            else four.ctxledger.ops_per_s > one.ctxledger.ops_per_s
        ),
    }


def render(result: WritersResult, console: Console) -> None:
    table = Table(
        "processes",
        "ctxledger ops/s",
        "p50 / p99 ms",
        "floor ops/s",
        "peer ops/s",
        "/ floor",
        "/ peer",
        title=(
            f"{result.backend}: open_context reuse, "
            f"{result.calls_per_process} calls a process"
        ),
        caption=(
            f"p50 / p99: ctxledger's, over all calls; / floor, / peer: ctxledger "
            f"ops/s over theirs. Peer: {escape(result.peer)}"
        ),
    )
    for row in result.rows:
        latency = row.ctxledger.latency
        table.add_row(
            str(row.processes),
            f"{row.ctxledger.ops_per_s:,.0f}",
            f"{latency.p50_ms:.3f} / {latency.p99_ms:.3f}",
            f"{row.floor.ops_per_s:,.0f}",
            f"{row.peer.ops_per_s:,.0f}" if row.peer else "-",
            f"{row.ctxledger_over_floor:.2f}x",
            f"{row.ctxledger_over_peer:.2f}x" if row.ctxledger_over_peer else "-",
        )
    console.print(table)
    for target, met in result.targets.items():
        verdict = "met" if met else "NOT MET"
        if met is None:
            verdict = "not measured (it needs 1, 4 and 8 processes, and the peer)"
        console.print(f"{result.backend} target, {target}: {verdict}", markup=False)


def parse_counts(_: click.Context, __: click.Parameter, value: str) -> list[int]:
    try:
        counts = [int(part) for part in value.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise click.BadParameter(f"{value!r}: give process counts as 1,2,4,8")
    return counts


@click.command()
@click.option(
    "--backend", type=click.Choice(["sqlite", "postgres", "all"]), default="all"
)
@click.option(
    "--processes", "counts", default="1,2,4,8", show_default=True, callback=parse_counts
)
@click.option("--calls", default=2000, show_default=True, help="Timed calls a process.")
@click.option("--users", default=50, show_default=True, help="Users a process.")
@click.option("--threads", default=4, show_default=True, help="Threads a user.")
@click.option("--seed", default=1, show_default=True)
@click.option("--postgres", "dsn", default=POSTGRES_DSN, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def main(
    *,
    backend: str,
    counts: list[int],
    calls: int,
    users: int,
    threads: int,
    seed: int,
    dsn: str,
    json_path: Path | None,
) -> None:
    """Measure writes by several processes beside the floor and the peer."""
    console = Console()
    options = {"calls": calls, "users": users, "threads": threads, "seed": seed}
    backends = ["sqlite", "postgres"] if backend == "all" else [backend]
    try:
        results = [run_backend(b, options, counts, dsn, console) for b in backends]
    except WriterFailed as error:
        raise click.ClickException(str(error)) from None
    for result in results:
        render(result, console)
    if json_path:
        json_path.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
