"""Benchmark of users spread over shards, with 8 writer processes.

    python -m tools.bench.shards [--processes 8] [--calls N] [--users N]
                                 [--threads N] [--rounds N]
                                 [--servers clusters|databases]
                                 [--rebuild-events N] [--postgres DSN] [--json FILE]

Each shard is a PostgreSQL cluster of its own, made for the run on a free port
(``tools.bench.clusters``), or, where clusters cannot be made, a database on the
shared server; every cluster and database is dropped at the end, on failure too.
Every writer process opens ``ContextLedger.open(url)`` on shard 0 and makes a
chat backend's calls on its own users (``tools.bench.shard_workloads``). In one
run:

- the router's cost per call (``tools.bench.shard_router``);
- throughput on one database (plain ledger), on 1 shard (a directory whose
  second shard is drained), 2 and 4 shards, each beside the floor (a bare INSERT
  + COMMIT per call spread over the same databases), with each server's CPU over
  the timed window; medians over ``--rounds`` rounds, the configurations taking
  turns within a round;
- one user written by every process (a user's stream lives on one shard);
- a rebuild of the views over 1, 2 and 4 shards (``tools.bench.shard_rebuild``);
- the capacity model at 4, 16 and 64 shards (``tools.bench.shard_capacity``).
"""

import json
import signal
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType

import click
import psycopg
from rich.console import Console
from rich.table import Table

from ledger import ContextLedger
from ledger._shard_admin import add_shard, drain_shard, list_shards
from tools.bench.api import POSTGRES_DSN, create_postgres_floor
from tools.bench.clusters import (
    Server,
    cluster_problem,
    databases,
    ledger_url,
    local_clusters,
    postmaster_of,
    server_version,
)
from tools.bench.contention import Chat
from tools.bench.processes import Throughput, Workload, run_processes
from tools.bench.shard_capacity import (
    Capacity,
    Measured,
    Storage,
    model,
    render_capacity,
)
from tools.bench.shard_rebuild import Rebuild, measure_rebuilds, render_rebuild
from tools.bench.shard_router import (
    RouterResult,
    directory_read_us,
    measure_router,
    render_router,
)
from tools.bench.shard_window import CpuWindow
from tools.bench.shard_workloads import NEW_USERS, ChatMix, Options, SpreadFloor, mix
from tools.bench.workloads import PostgresFloor

FLOOR_SCHEMA = "ctxlbench_floor"
SHARED_POOL = "pool_size=1&max_overflow=2"
"""On the shared server: each writer process holds several ledgers, one call at a
time, and the server's connections are shared with other jobs."""
SHARD_COUNTS = (2, 4)
PLAIN, ONE = "1 database, no directory", "1 shard"


@dataclass
class Run:
    """One timed run: its throughput and each used server's CPU in the window."""

    throughput: Throughput
    server_cpu_s: list[float | None]
    directory_reads: float = 0.0
    """Directory queries a call."""

    @property
    def server_ms_per_call(self) -> float | None:
        if not self.server_cpu_s or None in self.server_cpu_s:
            return None
        used = sum(cpu for cpu in self.server_cpu_s if cpu is not None)
        return round(used * 1000 / self.throughput.calls, 3)

    @property
    def server_cores(self) -> list[float | None]:
        """Each server's CPU over the window, in cores."""
        seconds = self.throughput.seconds
        return [None if c is None else round(c / seconds, 2) for c in self.server_cpu_s]


@dataclass
class Setup:
    """One configuration: shard 0's URL, its shards' databases and servers."""

    label: str
    url: str
    servers: list[Server]
    floor: SpreadFloor | None
    """None: the plain ledger's databases, whose floor it shares."""
    runs: list[Run] = field(default_factory=list)
    floor_runs: list[Run] = field(default_factory=list)


@dataclass
class ShardsResult:
    servers: str
    processes: int
    calls_per_process: int
    rounds: int
    mix: dict[str, float]
    router: RouterResult | None = None
    setups: dict[str, Measured] = field(default_factory=dict)
    hot_user: Throughput | None = None
    users_per_shard: list[int] = field(default_factory=list)
    storage: Storage | None = None
    rebuild: Rebuild | None = None
    capacity: Capacity | None = None


def measure(
    workload: Workload, servers: list[Server], processes: int, calls: int
) -> Run:
    with CpuWindow(servers, processes) as window:
        throughput = run_processes(window.marked(workload), processes, calls)
    return Run(throughput, window.used())


@contextmanager
def made_servers(
    kind: str, dsn: str, count: int, console: Console
) -> Iterator[tuple[str, list[Server]]]:
    """The servers of the run: ``count`` fresh clusters, else the shared one."""
    problem = cluster_problem() if kind == "clusters" else "--servers databases"
    if problem is None:
        console.print(f"making {count} PostgreSQL clusters (pg_createcluster) ...")
        with local_clusters(count, server_version(dsn)) as servers:
            ports = ", ".join(s.dsn.rsplit(":", 1)[1].split("/")[0] for s in servers)
            yield f"one PostgreSQL cluster per shard (ports {ports})", servers
        return
    console.print(f"shards are databases on {dsn}: {problem}", style="yellow")
    shared = Server("shared", dsn, postmaster_of(dsn), SHARED_POOL)
    yield f"databases on the shared server {dsn} ({problem})", [shared]


@contextmanager
def setups(servers: list[Server]) -> Iterator[list[Setup]]:
    """The configurations, their databases made and dropped afterwards."""
    with ExitStack() as stack:
        plain = stack.enter_context(databases(servers[:1], "plain", 1))
        one = stack.enter_context(databases(servers[:1], "one", 2))
        spread = {
            n: stack.enter_context(databases(servers, f"s{n}", n)) for n in SHARD_COUNTS
        }
        first = servers[:1]
        plain_url = ledger_url(plain[0], servers[0])
        ContextLedger.open(plain_url).close()
        one_url = _shard(one, servers[0])
        drain_shard(one_url, one[1])
        for urls in (plain, *spread.values()):
            _create_floors(urls)
        yield [
            Setup(PLAIN, plain_url, first, _floor(plain)),
            Setup(ONE, one_url, first, None),
            *(
                Setup(
                    f"{n} shards",
                    _shard(urls, servers[0]),
                    _used(servers, n),
                    _floor(urls),
                )
                for n, urls in spread.items()
            ),
        ]


def _shard(urls: list[str], server: Server) -> str:
    """Shard 0's URL as the ledgers open it, the other databases added."""
    url = ledger_url(urls[0], server)
    ContextLedger.open(url).close()
    for other in urls[1:]:
        add_shard(url, other)
    return url


def _create_floors(urls: list[str]) -> None:
    for url in urls:
        with psycopg.connect(url) as db:
            db.execute(f'CREATE SCHEMA IF NOT EXISTS "{FLOOR_SCHEMA}"')
            create_postgres_floor(db, FLOOR_SCHEMA)


def _floor(urls: list[str]) -> SpreadFloor:
    return SpreadFloor(tuple(PostgresFloor(url, FLOOR_SCHEMA) for url in urls))


def _used(servers: list[Server], shards: int) -> list[Server]:
    return servers[:shards] if len(servers) >= shards else servers[:1]


def run_rounds(all_setups: list[Setup], options: Options, console: Console) -> None:
    processes, calls = options.processes, options.calls
    for round_ in range(options.rounds):
        console.print(
            f"throughput: round {round_ + 1} of {options.rounds}, "
            f"{processes} processes x {calls} calls"
        )
        for n, setup in enumerate(all_setups):
            with tempfile.TemporaryDirectory() as folder:
                keys = options.keys(f"r{round_}-c{n}")
                workload = ChatMix(setup.url, keys, Path(folder))
                found = measure(workload, setup.servers, processes, calls)
                reads = sum(int(p.read_text()) for p in Path(folder).glob("*.reads"))
            found.directory_reads = round(reads / found.throughput.calls, 3)
            setup.runs.append(found)
            if setup.floor is not None:
                floor = measure(setup.floor, setup.servers, processes, calls)
                setup.floor_runs.append(floor)


def summarise(all_setups: list[Setup]) -> dict[str, Measured]:
    measured = {}
    for setup in all_setups:
        run, floor = (
            _median(setup.runs),
            _median(setup.floor_runs or all_setups[0].floor_runs),
        )
        measured[setup.label] = Measured(
            throughput=run.throughput,
            server_ms_per_call=run.server_ms_per_call,
            server_cores=run.server_cores,
            directory_reads=run.directory_reads,
            floor_ops_per_s=floor.throughput.ops_per_s,
            over_floor=round(run.throughput.ops_per_s / floor.throughput.ops_per_s, 2),
        )
    return measured


def _median(runs: list[Run]) -> Run:
    ordered = sorted(runs, key=lambda run: run.throughput.ops_per_s)
    return ordered[len(ordered) // 2]


def hot_user(url: str, options: Options) -> Throughput:
    """Every process writes its own thread of one user: the rate of one stream."""
    processes = options.processes
    with tempfile.TemporaryDirectory() as folder:
        chat = Chat(
            url, "hot", 1, processes, processes, True, options.seed, Path(folder)
        )
        return run_processes(chat, processes, options.calls // 2)


def storage_of(urls: list[str], empty: Storage | None = None) -> Storage:
    """Events and bytes of the ledger's tables (indexes included) on each shard;
    bytes an event over what the tables took when ``empty``."""
    events, size = [], []
    for url in urls:
        with psycopg.connect(url) as db:
            row = db.execute("SELECT count(*) FROM ctxledger_events").fetchone()
            events.append(int(row[0]) if row else 0)
            row = db.execute(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind = 'r'"
            ).fetchone()
            size.append(int(row[0]) if row and row[0] else 0)
    grown = sum(size) - (sum(empty.bytes) if empty else 0)
    return Storage(events, size, round(grown / max(1, sum(events))))


def run(options: Options, kind: str, dsn: str, console: Console) -> ShardsResult:
    count = max(SHARD_COUNTS)
    with made_servers(kind, dsn, count, console) as (described, servers):
        result = ShardsResult(
            described,
            options.processes,
            options.calls,
            options.rounds,
            mix(options.new_users),
        )
        result.router = measure_router(servers, options, console)
        with setups(servers) as all_setups:
            widest = all_setups[-1]
            shard_urls = [] if widest.floor is None else widest.floor.urls()
            empty = storage_of(shard_urls)
            run_rounds(all_setups, options, console)
            result.setups = summarise(all_setups)
            console.print("one user written by every process ...")
            result.hot_user = hot_user(all_setups[0].url, options)
            result.users_per_shard = [s.users for s in list_shards(widest.url)]
            result.storage = storage_of(shard_urls, empty)
        result.rebuild = measure_rebuilds(servers, options.rebuild_events, console)
    result.capacity = model(
        result.setups[ONE],
        directory_read_us(result.router),
        result.hot_user,
        result.storage,
        result.rebuild,
    )
    return result


def render(result: ShardsResult, console: Console) -> None:
    console.print(f"servers: {result.servers}", markup=False)
    if result.router is not None:
        render_router(result.router, console)
    render_setups(result, console)
    if result.hot_user is not None:
        hot = result.hot_user
        console.print(
            f"one user, {hot.processes} processes each writing its own thread: "
            f"{hot.ops_per_s:,.0f} calls/s (p50 / p99 {hot.latency.p50_ms:.2f} / "
            f"{hot.latency.p99_ms:.2f} ms)"
        )
    if result.storage is not None:
        console.print(
            f"widest run: users per shard {result.users_per_shard}, events per "
            f"shard {result.storage.events}, "
            f"{result.storage.bytes_per_event} bytes an event"
        )
    render_rebuild(result.rebuild, console)
    if result.capacity is not None:
        render_capacity(result.capacity, console)


def render_setups(result: ShardsResult, console: Console) -> None:
    table = Table(
        "configuration",
        "ops/s",
        "p50 / p99 ms",
        "writer CPU ms/call",
        "server CPU ms/call",
        "server cores, by shard",
        "directory queries",
        "floor ops/s",
        "/ floor",
        title=(
            f"{result.processes} writer processes, chat mix, "
            f"{result.calls_per_process} calls each; medians of {result.rounds} rounds"
        ),
    )
    for label, measured in result.setups.items():
        figures = measured.throughput
        cores = ", ".join(
            "-" if c is None else f"{c:.2f}" for c in measured.server_cores
        )
        table.add_row(
            label,
            f"{figures.ops_per_s:,.0f}",
            f"{figures.latency.p50_ms:.2f} / {figures.latency.p99_ms:.2f}",
            f"{figures.cpu_ms_per_call:.3f}",
            _cell(measured.server_ms_per_call, ".3f"),
            cores,
            f"{measured.directory_reads:.3f}",
            f"{measured.floor_ops_per_s:,.0f}",
            f"{measured.over_floor:.2f}x",
        )
    console.print(table)


def _cell(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _stop(signum: int, _: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds, so every cluster and database is dropped


@click.command()
@click.option("--processes", default=8, show_default=True, help="Writer processes.")
@click.option("--calls", default=1000, show_default=True, help="Timed calls a process.")
@click.option("--users", default=100, show_default=True, help="Users a process.")
@click.option("--threads", default=2, show_default=True, help="Threads a user.")
@click.option("--rounds", default=3, show_default=True)
@click.option(
    "--new-users",
    default=NEW_USERS,
    show_default=True,
    type=click.FloatRange(0, 0.5),
    help="Share of calls that are a new user's first message.",
)
@click.option(
    "--servers",
    "kind",
    type=click.Choice(["clusters", "databases"]),
    default="clusters",
    show_default=True,
    help="Shards on clusters made for the run, or databases on --postgres.",
)
@click.option(
    "--rebuild-events",
    default=40_000,
    show_default=True,
    help="Events a shard for the rebuilds (0: none).",
)
@click.option("--seed", default=1, show_default=True)
@click.option("--postgres", "dsn", default=POSTGRES_DSN, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def main(
    *,
    kind: str,
    dsn: str,
    json_path: Path | None,
    processes: int,
    calls: int,
    users: int,
    threads: int,
    rounds: int,
    new_users: float,
    rebuild_events: int,
    seed: int,
) -> None:
    """Measure writers and rebuilds over 1, 2 and 4 shards; print the capacity model."""
    signal.signal(signal.SIGTERM, _stop)
    options = Options(
        processes, calls, users, threads, rounds, new_users, rebuild_events, seed
    )
    console = Console()
    result = run(options, kind, dsn, console)
    render(result, console)
    if json_path:
        json_path.write_text(json.dumps(asdict(result), indent=2))


if __name__ == "__main__":
    main()
