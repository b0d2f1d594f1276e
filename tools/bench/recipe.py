"""The recipe's FastAPI app under uvicorn with 2 workers on PostgreSQL, driven by
real WebSocket clients, beside the same app with its change feed removed.

    python -m tools.bench.recipe [--users 300] [--light-users 20] [--idle 1000]
                                 [--load full|reconnect|light|light+idle|routing]
                                 [--rounds N] [--json FILE]

Each load runs against the app (``# app.py`` of docs/guide/fastapi.md, as the tests
run it) and then against the floor (the same text with ``ledger.changes(...)``
replaced by a feed that never yields: no reads, nothing pushed), each under its own
uvicorn with 2 workers on its own PostgreSQL schema:

- users x 2 threads x 10 messages, one socket per thread, each sending its next
  message once the last is acked;
- the same with 30% of the sockets closing after half their messages and
  reconnecting with ``?after=`` the last position they received;
- light: 20 users x 2 threads x 40 messages, 250 ms between a socket's messages
  (about 150 messages/s, a fifth of what the floor takes at the full load);
- the same light load beside 1,000 idle sockets of other users;
- routing: the full load against two single-worker servers of the app on one
  schema, each user's two sockets on different servers (spread), then all of a
  user's sockets on one server (sticky, as a load balancer hashing on the user
  would route them).

Reported: ack latency (send to ack), change delivery (ack to the socket's own
change), events lost or doubled (each socket must be pushed every event of its
user stored after it first connected, once, across its reconnections: checked
against the store), the CPU per message of the workers and of their PostgreSQL
backends (told apart by PGAPPNAME; from /proc, while the load runs until every
change is pushed), the client's CPU, and the workers' resident memory at the end
of the load; for the routing runs, the conflicts retried
(ctxledger_conflict_retries_total of both servers). Traffic stays on 127.0.0.1.
"""

import asyncio
import json
import statistics
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ledger import ContextLedger
from tools.bench.api import POSTGRES_DSN, postgres_schema
from tools.bench.recipe_load import Load, Run, Tally
from tools.bench.recipe_servers import (
    MASTER_KEY,
    WORKERS,
    Server,
    backend_cpu_seconds,
    cpu_seconds,
    recipe,
    rss_mb,
    serving,
    without_feed,
)


@dataclass
class Figures:
    load: str
    app: str
    messages: int
    seconds: float
    ack_p50_ms: float
    ack_p99_ms: float
    delivery_p50_ms: float | None
    delivery_p99_ms: float | None
    lost: int | None
    doubled: int | None
    errors: int
    worker_cpu_ms_per_message: float
    postgres_cpu_ms_per_message: float
    client_cpu_ms_per_message: float
    worker_rss_mb: float
    conflict_retries: float | None


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


@dataclass
class Marks:
    """Clock and CPU at the load's start and once it settled."""

    at: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    backends: dict[str, dict[int, float]] = field(default_factory=dict)
    rss_mb: float = 0.0
    retries: dict[str, float] = field(default_factory=dict)

    def postgres_cpu(self) -> float:
        """The CPU the servers' PostgreSQL backends used between the marks."""
        start, end = self.backends["start"], self.backends["settled"]
        return sum(cpu - start.get(pid, 0.0) for pid, cpu in end.items())


def measure(
    servers: list[Server], load_name: str, app: str, load: Load, *, sticky: bool = False
) -> Figures:
    """Runs ``load`` with fresh users against ``servers`` (which serve one
    ledger); ``app`` is "floor" for the app without its feed."""
    feed = app != "floor"
    url = servers[0].url
    with ContextLedger.open(url, master_key=MASTER_KEY) as ledger:
        after = ledger.chain_size()
    workers = [pid for server in servers for pid in server.workers()]
    if len(workers) != WORKERS:
        msg = f"{app}: {len(workers)} serving processes, not {WORKERS}"
        raise RuntimeError(msg)
    single = len(servers) == WORKERS  # each answers /metrics for itself
    marks = Marks()

    def mark(label: str) -> None:
        marks.at[label] = (
            time.perf_counter(),
            cpu_seconds(workers),
            time.process_time(),
        )
        marks.backends[label] = backend_cpu_seconds(servers)
        if label == "settled":
            marks.rss_mb = rss_mb(workers)
        if single:
            marks.retries[label] = sum(s.conflict_retries() for s in servers)

    prefix = f"b{uuid.uuid4().hex[:8]}"  # fresh users
    addresses = [server.address for server in servers]
    run = Run(addresses, load, prefix, after=after, feed=feed, sticky=sticky)
    tally = asyncio.run(run.drive(mark))
    lost, doubled = _lost_and_doubled(url, after, tally) if feed else (None, None)
    return _figures(load_name, app, load, tally, marks, wrong=(lost, doubled))


def _figures(
    load_name: str,
    app: str,
    load: Load,
    tally: Tally,
    marks: Marks,
    *,
    wrong: tuple[int | None, int | None],
) -> Figures:
    messages = load.sockets * load.messages
    (t0, w0, c0), (t1, w1, c1) = marks.at["start"], marks.at["settled"]
    delivered = bool(tally.deliveries)
    return Figures(
        load=load_name,
        app=app,
        messages=messages,
        seconds=t1 - t0,
        ack_p50_ms=statistics.median(tally.acks),
        ack_p99_ms=percentile(tally.acks, 0.99),
        delivery_p50_ms=statistics.median(tally.deliveries) if delivered else None,
        delivery_p99_ms=percentile(tally.deliveries, 0.99) if delivered else None,
        lost=wrong[0],
        doubled=wrong[1],
        errors=tally.errors + tally.idle_frames,
        worker_cpu_ms_per_message=(w1 - w0) * 1000 / messages,
        postgres_cpu_ms_per_message=marks.postgres_cpu() * 1000 / messages,
        client_cpu_ms_per_message=(c1 - c0) * 1000 / messages,
        worker_rss_mb=marks.rss_mb,
        conflict_retries=(
            marks.retries["settled"] - marks.retries["start"] if marks.retries else None
        ),
    )


def _lost_and_doubled(url: str, after: int, tally: Tally) -> tuple[int, int]:
    """Against the store: events of a socket's user it was never pushed, and
    pushes beyond one of each."""
    stored: dict[str, set[int]] = defaultdict(set)
    with ContextLedger.open(url, master_key=MASTER_KEY) as ledger:
        head = ledger.chain_size()
        with ledger.changes(after=after) as feed:
            while feed.position < head:
                for position, event in feed.poll():
                    stored[event.user_id].add(position)
    lost = doubled = 0
    for (user, _), pushed in tally.received.items():
        lost += len(stored[user] - set(pushed))
        doubled += len(pushed) - len(set(pushed) & stored[user])
    return lost, doubled


def loads(users: int, light: int, idle: int) -> dict[str, tuple[str, Load]]:
    """The loads by label: what each is, and the load."""
    return {
        "full": (
            f"{users} users x 2 threads x 10 messages",
            Load(users, 2, 10),
        ),
        "reconnect": (
            "the same, 30% of the sockets reconnecting once by position",
            Load(users, 2, 10, reconnecting=0.3),
        ),
        "light": (
            f"{light} users x 2 threads x 40 messages, 250 ms apart",
            Load(light, 2, 40, pause=0.25),
        ),
        "light+idle": (
            f"the same beside {idle:,} idle sockets of other users",
            Load(light, 2, 40, pause=0.25, idle=idle),
        ),
        "routing": (
            f"{users} users x 2 threads x 10 messages on two single-worker servers:"
            " a user's sockets on both (spread) or on one (sticky)",
            Load(users, 2, 10),
        ),
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def render(figures: list[Figures], legend: dict[str, str]) -> None:
    table = Table(
        "load",
        "app",
        "msg/s",
        "ack p50 / p99 ms",
        "delivery p50 / p99 ms",
        "lost / doubled",
        "worker CPU ms/msg",
        "PG CPU ms/msg",
        "client CPU ms/msg",
        "worker RSS MB",
        "conflicts retried",
    )
    for f in figures:
        table.add_row(
            f.load,
            f.app,
            f"{f.messages / f.seconds:,.0f}",
            f"{f.ack_p50_ms:.1f} / {f.ack_p99_ms:.1f}",
            f"{_ms(f.delivery_p50_ms)} / {_ms(f.delivery_p99_ms)}",
            "-" if f.lost is None else f"{f.lost} / {f.doubled}",
            f"{f.worker_cpu_ms_per_message:.2f}",
            f"{f.postgres_cpu_ms_per_message:.2f}",
            f"{f.client_cpu_ms_per_message:.2f}",
            f"{f.worker_rss_mb:.0f}",
            "-" if f.conflict_retries is None else f"{f.conflict_retries:,.0f}",
        )
    console = Console(width=160)
    console.print(table)
    for label, what in legend.items():
        console.print(f"{label}: {what}", markup=False)
    for line in targets(figures):
        console.print(line, markup=False)


def targets(figures: list[Figures]) -> list[str]:
    """Each target, met or missed, for the loads measured."""
    by = {(f.load, f.app): f for f in figures}
    lines = []
    for load in dict.fromkeys(f.load for f in figures if f.app == "floor"):
        ratio = by[load, "app"].ack_p50_ms / by[load, "floor"].ack_p50_ms
        what = f"{load}: ack p50 {ratio:.2f}x the floor's (at most 1.3x)"
        lines.append(_verdict(what, ratio <= 1.3))
    for load in ("light", "light+idle"):
        if (load, "app") in by:
            p99 = by[load, "app"].delivery_p99_ms or 0.0
            what = f"{load}: delivery p99 {p99:.0f} ms (at most 250)"
            lines.append(_verdict(what, p99 <= 250))
    if ("light", "app") in by and ("light+idle", "app") in by:
        base = by["light", "app"].worker_cpu_ms_per_message
        added = by["light+idle", "app"].worker_cpu_ms_per_message / base - 1
        what = f"idle sockets add {added:+.0%} worker CPU per message (at most 10%)"
        lines.append(_verdict(what, added <= 0.1))
    if ("routing", "sticky") in by:
        lines.append(_routing(by["routing", "spread"], by["routing", "sticky"]))
    wrong = sum((f.lost or 0) + (f.doubled or 0) + f.errors for f in figures)
    lines.append(_verdict(f"events lost or doubled, errors: {wrong} (none)", not wrong))
    return lines


def _routing(spread: Figures, sticky: Figures) -> str:
    return (
        f"sticky sessions: {sticky.conflict_retries or 0:,.0f} conflicts retried "
        f"(spread: {spread.conflict_retries or 0:,.0f}), worker CPU "
        f"{sticky.worker_cpu_ms_per_message:.2f} ms/msg "
        f"({spread.worker_cpu_ms_per_message:.2f}), PostgreSQL CPU "
        f"{sticky.postgres_cpu_ms_per_message:.2f} ms/msg "
        f"({spread.postgres_cpu_ms_per_message:.2f}), ack p50 "
        f"{sticky.ack_p50_ms:.1f} ms ({spread.ack_p50_ms:.1f})"
    )


def _verdict(what: str, met: bool) -> str:
    return f"{'met   ' if met else 'MISSED'}  {what}"


@click.command()
@click.option("--users", default=300, show_default=True, type=click.IntRange(1))
@click.option("--light-users", default=20, show_default=True, type=click.IntRange(1))
@click.option("--idle", default=1000, show_default=True, type=click.IntRange(0))
@click.option(
    "--load",
    "only",
    multiple=True,
    type=click.Choice(["full", "reconnect", "light", "light+idle", "routing"]),
    help="Run only these loads (repeat the option); all by default.",
)
@click.option(
    "--rounds",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="Run each load this many times (app and floor in turn); medians shown.",
)
@click.option("--postgres", "dsn", default=POSTGRES_DSN, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def main(
    *,
    users: int,
    light_users: int,
    idle: int,
    only: tuple[str, ...],
    rounds: int,
    dsn: str,
    json_path: Path | None,
) -> None:
    """Measure the recipe's FastAPI app beside the same app without its feed."""
    app = recipe()
    chosen = {
        label: load
        for label, load in loads(users, light_users, idle).items()
        if not only or label in only
    }
    routing = chosen.pop("routing", None)
    figures: list[Figures] = []
    with (
        postgres_schema(dsn, "postgres") as with_feed,
        postgres_schema(dsn, "postgres") as floor_schema,
        serving("app", app, f"{dsn}?schema={with_feed}") as server,
        serving("floor", without_feed(app), f"{dsn}?schema={floor_schema}") as floor,
    ):
        for label, (_, load) in chosen.items():
            for round_ in range(rounds):
                for each in (server, floor):
                    figures.append(measure([each], label, each.name, load))
                    done = f"{label}, {each.name}, round {round_ + 1}: done"
                    print(done, file=sys.stderr)
    if routing is not None:
        figures += measure_routing(dsn, app, routing[1], rounds)
        chosen["routing"] = routing
    medians = combined(figures)
    render(medians, {label: what for label, (what, _) in chosen.items()})
    if json_path is not None:
        runs = {"medians": medians, "rounds": figures}
        saved = {key: [asdict(f) for f in rows] for key, rows in runs.items()}
        json_path.write_text(json.dumps(saved, indent=2))


def measure_routing(dsn: str, app: str, load: Load, rounds: int) -> list[Figures]:
    """``load`` against two single-worker servers of one ledger: spread, then
    sticky, ``rounds`` times."""
    with postgres_schema(dsn, "postgres") as schema:
        url = f"{dsn}?schema={schema}"
        with (
            serving("app", app, url, workers=1) as first,
            serving("app", app, url, workers=1) as second,
        ):
            figures = []
            for mode in ("spread", "sticky") * rounds:
                pair = [first, second]
                figures.append(
                    measure(pair, "routing", mode, load, sticky=mode == "sticky")
                )
                print(f"routing, {mode}: done", file=sys.stderr)
            return figures


def combined(figures: list[Figures]) -> list[Figures]:
    """One row per load and app: the median of each figure over the rounds, and
    the sum of what went wrong."""
    rounds: dict[tuple[str, str], list[Figures]] = defaultdict(list)
    for each in figures:
        rounds[each.load, each.app].append(each)
    rows = []
    for runs in rounds.values():
        values = [asdict(run) for run in runs]
        row: dict[str, Any] = {}
        for name, first in values[0].items():
            column = [value[name] for value in values]
            if name in {"lost", "doubled", "errors"}:
                row[name] = None if first is None else sum(column)
            elif isinstance(first, float):
                row[name] = statistics.median(column)
            else:
                row[name] = first
        rows.append(Figures(**row))
    return rows


if __name__ == "__main__":
    main()
