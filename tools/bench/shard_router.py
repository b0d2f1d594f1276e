"""The router's cost per call, measured call by call beside a plain ledger.

Four ledgers, each on a server of its own where the run has clusters: one
database through a plain ledger (no directory), and one shard through a sharded
ledger (a directory whose second shard is drained, so every user lands on shard
0) with its directory cache warm (an hour: only a new user reads the directory),
as it comes (5 s: a user idle for longer in a process is read again) and cold
(0 s: every call reads it). Every writer process makes each call of the chat mix
on the four in turn (``Interleaved``), so they meet the same moments of a shared
machine; each server's CPU is read over the window. Figures are medians over
rounds.
"""

import json
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ledger import ContextLedger
from ledger._shard_admin import add_shard, drain_shard
from tools.bench.clusters import Server, databases, ledger_url
from tools.bench.processes import run_processes
from tools.bench.shard_window import CpuWindow
from tools.bench.shard_workloads import Interleaved, Options, Variant

PLAIN = "1 database, no directory"
WARM = "1 shard, warm cache (1 h)"
DEFAULT = "1 shard, 5 s cache (default)"
COLD = "1 shard, cold cache (0 s)"
CACHES = {WARM: 3600.0, DEFAULT: None, COLD: 0.0}
"""The sharded ledgers' directory cache lifetimes (None: the ledger's own)."""
TARGET = 0.05
"""The issue's target: a sharded ledger on one shard costs at most 5% more a call."""


@dataclass
class Cost:
    """One ledger's figures a call (medians over rounds), in microseconds."""

    label: str
    wall_mean: float
    wall_p50: float
    writer_cpu: float
    server_cpu: float | None
    """None when the three share a server (databases on the shared one)."""
    directory_reads: float = 0.0
    """Directory queries a call (reads on a cache miss, a new user's three)."""
    by_kind: dict[str, dict[str, float]] = field(default_factory=dict)
    """Each kind of call's mean latency and writer CPU."""


@dataclass
class RouterResult:
    calls_per_round: int
    rounds: int
    costs: list[Cost] = field(default_factory=list)
    over_plain: dict[str, dict[str, float | None]] = field(default_factory=dict)
    """Each sharded ledger's latency and CPU (writer + server) over the plain one's."""


def measure_router(
    servers: list[Server], options: Options, console: Console
) -> RouterResult:
    count = 1 + len(CACHES)
    own = servers[:count] if len(servers) >= count else servers[:1] * count
    distinct = own if len({s.name for s in own}) == count else []
    result = RouterResult(options.processes * options.calls, options.rounds)
    per_round: list[list[Cost]] = []
    with ledgers(own) as variants, tempfile.TemporaryDirectory() as folder:
        for round_ in range(options.rounds):
            console.print(f"router: round {round_ + 1} of {options.rounds}")
            keys = options.keys(f"router{round_}")
            workload = Interleaved(variants, keys, Path(folder))
            with CpuWindow(distinct, options.processes) as window:
                run_processes(window.marked(workload), options.processes, options.calls)
            per_round.append(_costs(Path(folder), options.processes, window.used()))
    result.costs = [_median(list(costs)) for costs in zip(*per_round, strict=True)]
    plain = result.costs[0]
    result.over_plain = {cost.label: _over(cost, plain) for cost in result.costs[1:]}
    return result


@contextmanager
def ledgers(servers: list[Server]) -> Iterator[tuple[Variant, ...]]:
    with ExitStack() as stack:
        plain_db = stack.enter_context(databases(servers[:1], "rplain", 1))[0]
        plain = ledger_url(plain_db, servers[0])
        ContextLedger.open(plain).close()
        variants = [Variant(PLAIN, plain)]
        for (label, cache), server in zip(CACHES.items(), servers[1:], strict=True):
            urls = stack.enter_context(databases([server], "rshard", 2))
            url = ledger_url(urls[0], server)
            ContextLedger.open(url).close()
            add_shard(url, urls[1])
            drain_shard(url, urls[1])
            variants.append(Variant(label, url, cache))
        yield tuple(variants)


def _costs(folder: Path, processes: int, server_cpu: list[float | None]) -> list[Cost]:
    reports = [json.loads((folder / f"{w}.json").read_text()) for w in range(processes)]
    kinds = [kind for report in reports for kind in report["kinds"]]
    costs = []
    for i, label in enumerate((PLAIN, *CACHES)):
        wall = [ns / 1000 for report in reports for ns in report["wall_ns"][i]]
        cpu = [ns / 1000 for report in reports for ns in report["cpu_ns"][i]]
        server = server_cpu[i] if i < len(server_cpu) else None
        costs.append(
            Cost(
                label,
                wall_mean=statistics.fmean(wall),
                wall_p50=statistics.median(wall),
                writer_cpu=statistics.fmean(cpu),
                server_cpu=None if server is None else server * 1e6 / len(wall),
                directory_reads=sum(r["directory_reads"][i] for r in reports)
                / len(wall),
                by_kind=_by_kind(kinds, wall, cpu),
            )
        )
    return costs


def _by_kind(
    kinds: list[str], wall: list[float], cpu: list[float]
) -> dict[str, dict[str, float]]:
    found: dict[str, dict[str, float]] = {}
    for kind in sorted(set(kinds)):
        picked = [i for i, k in enumerate(kinds) if k == kind]
        found[kind] = {
            "calls": len(picked),
            "wall_mean": statistics.fmean(wall[i] for i in picked),
            "writer_cpu": statistics.fmean(cpu[i] for i in picked),
        }
    return found


def _median(costs: list[Cost]) -> Cost:
    def median(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return round(statistics.median(known), 1) if known else None

    kinds = costs[0].by_kind
    return Cost(
        costs[0].label,
        wall_mean=median([c.wall_mean for c in costs]) or 0.0,
        wall_p50=median([c.wall_p50 for c in costs]) or 0.0,
        writer_cpu=median([c.writer_cpu for c in costs]) or 0.0,
        server_cpu=median([c.server_cpu for c in costs]),
        directory_reads=statistics.median(c.directory_reads for c in costs),
        by_kind={
            kind: {
                name: median([c.by_kind[kind][name] for c in costs]) or 0.0
                for name in figures
            }
            for kind, figures in kinds.items()
        },
    )


def _over(cost: Cost, plain: Cost) -> dict[str, float | None]:
    cpu = None
    if cost.server_cpu is not None and plain.server_cpu is not None:
        cpu = round(
            (cost.writer_cpu + cost.server_cpu) / (plain.writer_cpu + plain.server_cpu),
            3,
        )
    return {
        "wall_mean": round(cost.wall_mean / plain.wall_mean, 3),
        "wall_p50": round(cost.wall_p50 / plain.wall_p50, 3),
        "writer_cpu": round(cost.writer_cpu / plain.writer_cpu, 3),
        "cpu": cpu,
    }


def directory_read_us(result: RouterResult) -> float | None:
    """Server CPU of one directory read: what the cold ledger's server spent a
    call over the warm one's, by directory query more."""
    by_label = {cost.label: cost for cost in result.costs}
    warm, cold = by_label[WARM], by_label[COLD]
    reads = cold.directory_reads - warm.directory_reads
    if warm.server_cpu is None or cold.server_cpu is None or reads <= 0:
        return None
    return round((cold.server_cpu - warm.server_cpu) / reads, 1)


def render_router(result: RouterResult, console: Console) -> None:
    table = Table(
        "ledger",
        "latency mean / p50 us",
        "writer CPU us",
        "server CPU us",
        "directory queries",
        "latency over plain",
        "CPU over plain",
        title=(
            f"the router's cost a call: {result.calls_per_round:,} calls a ledger "
            f"a round, interleaved; medians of {result.rounds} rounds"
        ),
        caption="CPU: the writer's and the server's; latency: the mean",
    )
    for cost in result.costs:
        over = result.over_plain.get(cost.label, {})
        table.add_row(
            cost.label,
            f"{cost.wall_mean:,.0f} / {cost.wall_p50:,.0f}",
            f"{cost.writer_cpu:,.0f}",
            "-" if cost.server_cpu is None else f"{cost.server_cpu:,.0f}",
            f"{cost.directory_reads:.3f}",
            _ratio(over.get("wall_mean")),
            _ratio(over.get("cpu")),
        )
    console.print(table)
    render_kinds(result, console)
    warm = result.over_plain.get(WARM, {})
    for name, key in (("CPU a call", "cpu"), ("mean latency", "wall_mean")):
        console.print(
            f"target, a warm router's {name} at most {TARGET:.0%} over one "
            f"database's: {_verdict(warm.get(key))}"
        )


def render_kinds(result: RouterResult, console: Console) -> None:
    """Each kind of call's latency and writer CPU, routed over plain."""
    plain, *routed = result.costs
    table = Table(
        "call",
        "share",
        "plain: latency / writer CPU us",
        *(f"{cost.label}: over plain, us" for cost in routed),
        title="by kind of call (the server's CPU is known for the whole mix only)",
    )
    total = sum(figures["calls"] for figures in plain.by_kind.values())
    for kind, figures in plain.by_kind.items():
        cells = []
        for cost in routed:
            other = cost.by_kind[kind]
            cells.append(
                f"{other['wall_mean'] - figures['wall_mean']:+,.0f} / "
                f"{other['writer_cpu'] - figures['writer_cpu']:+,.0f}"
            )
        table.add_row(
            kind,
            f"{figures['calls'] / total:.1%}",
            f"{figures['wall_mean']:,.0f} / {figures['writer_cpu']:,.0f}",
            *cells,
        )
    console.print(table)


def _verdict(ratio: float | None) -> str:
    if ratio is None:
        return "not measured"
    return "met" if ratio <= 1 + TARGET else "NOT MET"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}x"
