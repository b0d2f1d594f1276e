"""Benchmark of one user's threads spread over several writer processes.

    python -m tools.bench.contention [--backend sqlite|postgres|all]
                                     [--processes 2,4] [--calls N] [--users N]
                                     [--threads N] [--postgres DSN] [--json FILE]

For each backend and process count, in one run, the same load shared two ways:
``open_context`` reuse calls on the threads of ``--users`` users, each process
making ``--calls`` calls at random over its share of the (user, thread) pairs.

- ``own``: each user's threads all on one process (one socket per user);
- ``spread``: each user's threads spread over every process (what a server's
  workers get when sockets land on any of them), so processes race on each
  user's stream, and the loser of a race retries;
- ``spread + lock`` (PostgreSQL): the same, with each call made under a
  session advisory lock per user (taken and released on a connection of its own)
  and the user's state read from the store first, as a per-user lock inside the
  ledger would have to: its waits instead of the ledger's retries.

The target: ``spread`` reaches at least 0.7x the throughput of ``own``, with 2 and
with 4 processes. Conflict retries are counted from the ledger's metrics
(``ctxledger_conflict_retries_total``, when prometheus-client is installed).
"""

import json
import random
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import psycopg
from rich.console import Console
from rich.table import Table

from ledger import ContextLedger
from tools.bench.api import POSTGRES_DSN, postgres_schema
from tools.bench.processes import Step, Throughput, WriterFailed, run_processes

TARGET = 0.7
LOCK = "SELECT pg_advisory_lock(hashtext(%s))"
UNLOCK = "SELECT pg_advisory_unlock(hashtext(%s))"


def conflict_retries() -> float | None:
    """The ledger's conflict retries so far in this process (None: no metrics)."""
    try:
        from prometheus_client import REGISTRY  # noqa: PLC0415 - optional extra
    except ImportError:
        return None
    return REGISTRY.get_sample_value("ctxledger_conflict_retries_total")


@dataclass(frozen=True)
class Chat:
    """What one writer process runs: reuse calls over its share of the threads."""

    url: str
    run: str
    users: int
    threads: int
    processes: int
    spread: bool
    seed: int
    reports: Path
    lock_dsn: str | None = None

    def pairs(self, worker: int) -> list[tuple[str, str]]:
        return [
            (f"{self.run}-user-{u}", f"thread-{t}")
            for u in range(self.users)
            for t in range(self.threads)
            if (t if self.spread else u) % self.processes == worker
        ]

    @contextmanager
    def steps(self, worker: int, calls: int) -> Iterator[Step]:
        with ExitStack() as stack:
            ledger = stack.enter_context(
                ContextLedger.open(self.url, max_contexts_per_user=self.threads)
            )
            pairs = self.pairs(worker)
            for user, thread in pairs:
                ledger.open_context(user, thread, run_id="run-0")
            rng = random.Random(self.seed * 1000 + worker)
            picks = [rng.choice(pairs) for _ in range(calls)]

            def reuse(n: int) -> object:
                user, thread = picks[n]
                return ledger.open_context(user, thread, run_id=f"run-{n + 1}")

            step: Step = reuse
            if self.lock_dsn is not None:
                locks = stack.enter_context(
                    psycopg.connect(self.lock_dsn, autocommit=True)
                )

                def locked(n: int) -> object:
                    user, thread = picks[n]
                    locks.execute(LOCK, (user,))
                    try:
                        ledger.get_context(user, thread)  # the stored state first
                        return reuse(n)
                    finally:
                        locks.execute(UNLOCK, (user,))

                step = locked
            before = conflict_retries()
            yield step
            after = conflict_retries()
            retries = None if before is None or after is None else after - before
            (self.reports / f"{worker}.json").write_text(json.dumps(retries))


@dataclass
class Measured:
    throughput: Throughput
    retries: int | None
    retries_per_call: float | None


@dataclass
class Row:
    """One process count: each way's round of median throughput, and the median
    over rounds of the ratio to ``own`` measured in the same round."""

    processes: int
    own: Measured
    spread: Measured
    locked: Measured | None
    spread_over_own: float
    locked_over_own: float | None
    rounds: list[dict[str, float]] = field(default_factory=list)


@dataclass
class ContentionResult:
    backend: str
    users: int
    threads: int
    calls_per_process: int
    rounds: int
    rows: list[Row] = field(default_factory=list)
    targets: dict[str, bool] = field(default_factory=dict)


def measure(chat: Chat, calls: int) -> Measured:
    throughput = run_processes(chat, chat.processes, calls)
    counts = [
        json.loads((chat.reports / f"{worker}.json").read_text())
        for worker in range(chat.processes)
    ]
    if any(count is None for count in counts):
        return Measured(throughput, None, None)
    retries = round(sum(counts))
    return Measured(throughput, retries, round(retries / throughput.calls, 3))


def measure_row(
    url: str, folder: Path, dsn: str | None, processes: int, options: dict[str, int]
) -> Row:
    """Each way in turn, ``rounds`` times: a busy moment of the machine falls on
    one round, not on one way."""
    measured: dict[str, list[Measured]] = {"own": [], "spread": [], "locked": []}
    rounds: list[dict[str, float]] = []
    for round_ in range(options["rounds"]):
        ways = {"own": False, "spread": True} | ({"locked": True} if dsn else {})
        for way, spread in ways.items():
            chat = Chat(
                url,
                f"p{processes}-r{round_}-{way}",
                options["users"],
                options["threads"],
                processes,
                spread,
                options["seed"],
                folder,
                dsn if way == "locked" else None,
            )
            measured[way].append(measure(chat, options["calls"]))
        rounds.append(
            {
                way: _ratio(found[-1], measured["own"][-1])
                for way, found in measured.items()
                if found and way != "own"
            }
        )
    locked = [r["locked"] for r in rounds if "locked" in r]
    return Row(
        processes,
        _median(measured["own"]),
        _median(measured["spread"]),
        _median(measured["locked"]) if measured["locked"] else None,
        statistics.median(r["spread"] for r in rounds),
        statistics.median(locked) if locked else None,
        rounds,
    )


def run_backend(
    backend: str, options: dict[str, int], counts: list[int], dsn: str, console: Console
) -> ContentionResult:
    result = ContentionResult(
        backend,
        options["users"],
        options["threads"],
        options["calls"],
        options["rounds"],
    )
    with (
        tempfile.TemporaryDirectory() as folder,
        postgres_schema(dsn, backend) as schema,
    ):
        url = f"sqlite:///{Path(folder) / 'ledger.db'}"
        if backend == "postgres":
            url = f"{dsn}?schema={schema}"
        ContextLedger.open(url).close()
        for processes in counts:
            console.print(
                f"{backend}: {processes} processes x {options['calls']} calls, "
                f"{options['rounds']} rounds"
            )
            lock_dsn = dsn if backend == "postgres" else None
            result.rows.append(
                measure_row(url, Path(folder), lock_dsn, processes, options)
            )
    result.targets = {
        f"{row.processes} processes: spread >= {TARGET}x own": (
            row.spread_over_own >= TARGET
        )
        for row in result.rows
    }
    return result


def _median(found: list[Measured]) -> Measured:
    ordered = sorted(found, key=lambda measured: measured.throughput.ops_per_s)
    return ordered[len(ordered) // 2]


def _ratio(one: Measured, other: Measured) -> float:
    return round(one.throughput.ops_per_s / other.throughput.ops_per_s, 2)


def _cell(measured: Measured | None) -> str:
    if measured is None:
        return "-"
    figures = measured.throughput
    retries = "-" if measured.retries is None else f"{measured.retries:,}"
    return (
        f"{figures.ops_per_s:,.0f} ({figures.latency.p50_ms:.2f} / "
        f"{figures.latency.p99_ms:.2f}; {retries})"
    )


def render(result: ContentionResult, console: Console) -> None:
    table = Table(
        "processes",
        "own: ops/s (p50 / p99 ms; retries)",
        "spread",
        "spread + lock",
        "spread / own",
        "lock / own",
        title=(
            f"{result.backend}: {result.users} users x {result.threads} threads, "
            f"{result.calls_per_process} calls a process; the median of "
            f"{result.rounds} rounds"
        ),
    )
    for row in result.rows:
        table.add_row(
            str(row.processes),
            _cell(row.own),
            _cell(row.spread),
            _cell(row.locked),
            f"{row.spread_over_own:.2f}x",
            "-" if row.locked_over_own is None else f"{row.locked_over_own:.2f}x",
        )
    console.print(table)
    for target, met in result.targets.items():
        verdict = "met" if met else "NOT MET"
        console.print(f"{result.backend} target, {target}: {verdict}", markup=False)


def parse_counts(_: click.Context, __: click.Parameter, value: str) -> list[int]:
    try:
        counts = [int(part) for part in value.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise click.BadParameter(f"{value!r}: give process counts as 2,4")
    return counts


@click.command()
@click.option(
    "--backend", type=click.Choice(["sqlite", "postgres", "all"]), default="all"
)
@click.option(
    "--processes", "counts", default="2,4", show_default=True, callback=parse_counts
)
@click.option("--calls", default=1500, show_default=True, help="Timed calls a process.")
@click.option("--users", default=8, show_default=True, help="Users in all.")
@click.option("--threads", default=4, show_default=True, help="Threads a user.")
@click.option("--rounds", default=3, show_default=True, type=click.IntRange(1))
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
    rounds: int,
    seed: int,
    dsn: str,
    json_path: Path | None,
) -> None:
    """Measure one user's threads spread over processes against one process each."""
    for processes in counts:
        if users % processes or threads % processes:
            message = f"--users and --threads must be multiples of {processes}"
            raise click.BadParameter(message)
    console = Console(width=160)
    options = {
        "calls": calls,
        "users": users,
        "threads": threads,
        "rounds": rounds,
        "seed": seed,
    }
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
