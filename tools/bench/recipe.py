"""The README's FastAPI app under uvicorn with 2 workers on PostgreSQL, driven by
real WebSocket clients, beside the same app with its change feed removed.

    python -m tools.bench.recipe [--users 300] [--light-users 20] [--idle 1000]
                                 [--load full|reconnect|light|light+idle] [--json FILE]

Each load runs against the app (``# app.py`` of the README, as the tests run it)
and then against the floor (the same text with ``ledger.changes(...)`` replaced by
a feed that never yields: no reads, nothing pushed), each under its own uvicorn
with 2 workers on its own PostgreSQL schema:

- users x 2 threads x 10 messages, one socket per thread, each sending its next
  message once the last is acked;
- the same with 30% of the sockets closing after half their messages and
  reconnecting with ``?after=`` the last position they received;
- light: 20 users x 2 threads x 40 messages, 250 ms between a socket's messages
  (about 150 messages/s, a fifth of what the floor takes at the full load);
- the same light load beside 1,000 idle sockets of other users.

Reported: ack latency (send to ack), change delivery (ack to the socket's own
change), events lost or doubled (each socket must be pushed every event of its
user stored after it first connected, once, across its reconnections: checked
against the store), the workers' and PostgreSQL's CPU per message (from /proc,
while the load runs until every change is pushed), the client's CPU, and the
workers' resident memory at the end of the load. Traffic stays on 127.0.0.1.
"""

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ledger import ContextLedger
from tools.bench.api import POSTGRES_DSN, postgres_schema
from tools.bench.recipe_load import SECRET, Load, Run, Tally

README = Path(__file__).resolve().parents[2] / "README.md"
MASTER_KEY = "5e" * 32
WORKERS = 2
TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
FEED_CALL = "ledger.changes(user_id, after=start)"
NO_FEED = '''

class _NoFeed:
    """The benchmark's floor: a feed that never yields and reads nothing."""

    async def __aenter__(self) -> "_NoFeed":
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def __aiter__(self) -> "_NoFeed":
        return self

    async def __anext__(self) -> Any:
        await asyncio.Event().wait()


def _no_feed(user_id: str, *, after: int | None) -> _NoFeed:
    return _NoFeed()
'''


def recipe() -> str:
    """The README's ``# app.py`` block, exactly as the tests extract it."""
    blocks = [b.split("```", 1)[0] for b in README.read_text().split("```python\n")]
    (app,) = [block for block in blocks if block.startswith("# app.py\n")]
    return app


def without_feed(app: str) -> str:
    """The same app with its change feed removed."""
    if app.count(FEED_CALL) != 1:
        msg = f"the recipe no longer opens its feed as {FEED_CALL}: update the bench"
        raise RuntimeError(msg)
    return app.replace(FEED_CALL, "_no_feed(user_id, after=start)") + NO_FEED


@dataclass
class Server:
    name: str
    url: str
    address: str
    pid: int

    def workers(self) -> list[int]:
        """The uvicorn parent's worker processes (not its resource tracker)."""
        pids = [int(path.name) for path in Path("/proc").glob("[0-9]*")]
        children = [pid for pid in pids if _stat(pid)[1:2] == [str(self.pid)]]
        return [pid for pid in children if b"spawn_main" in _cmdline(pid)]


@contextmanager
def serving(name: str, app: str, url: str) -> Iterator[Server]:
    """``app`` under uvicorn with 2 workers on ``url``, until the block ends."""
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "app.py").write_text(app)
        with ContextLedger.open(url, master_key=MASTER_KEY):
            pass  # the tables exist before two workers start
        port = _free_port()
        env = {
            **os.environ,
            "CTXLEDGER_URL": url,
            "CTXLEDGER_MASTER_KEY": MASTER_KEY,
            "APP_SECRET": SECRET,
        }
        command = [sys.executable, "-m", "uvicorn", "app:app", "--app-dir", folder]
        command += ["--workers", str(WORKERS), "--port", str(port)]
        command += ["--log-level", "warning"]
        with Path(folder, "uvicorn.log").open("w") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=log)  # noqa: S603
            try:
                _wait_healthy(port, process, Path(folder, "uvicorn.log"))
                yield Server(name, url, f"127.0.0.1:{port}", process.pid)
            finally:
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_healthy(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/healthz", timeout=1
            ) as answer:
                if answer.status == 200:
                    return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                msg = f"uvicorn did not start:\n{log.read_text()[-3000:]}"
                raise RuntimeError(msg) from None
            time.sleep(0.2)


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (empty if it ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def cpu_seconds(pids: list[int], *, reaped: bool = False) -> float:
    """User and system CPU of the processes, from /proc; with ``reaped``, also
    that of their children that ended (how a PostgreSQL server keeps the CPU
    of its closed connections)."""
    ticks = 0
    for pid in pids:
        fields = _stat(pid)
        if fields:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
            if reaped:
                ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / TICKS


def rss_mb(pids: list[int]) -> float:
    pages = 0
    for pid in pids:
        try:
            pages += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except OSError:
            continue
    return pages * PAGE_SIZE / 2**20


def postgres_cpu_seconds() -> float:
    """The CPU of every PostgreSQL process, those that ended included."""
    pids = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == "postgres":
                pids.append(int(comm.parent.name))
        except OSError:
            continue
    # Only the server's first process reaps the others; theirs count once.
    parents = {pid for pid in pids if _stat(pid) and int(_stat(pid)[1]) not in pids}
    live = cpu_seconds([pid for pid in pids if pid not in parents])
    return live + cpu_seconds(sorted(parents), reaped=True)


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


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def measure(server: Server, name: str, load: Load) -> Figures:
    """Runs ``load`` against ``server`` with fresh users."""
    feed = server.name == "app"
    with ContextLedger.open(server.url, master_key=MASTER_KEY) as ledger:
        after = ledger.chain_size()
    workers = server.workers()
    if len(workers) != WORKERS:
        msg = f"the {server.name}'s uvicorn has {len(workers)} workers, not {WORKERS}"
        raise RuntimeError(msg)
    marks: dict[str, tuple[float, float, float, float]] = {}

    def mark(label: str) -> None:
        marks[label] = (
            time.perf_counter(),
            cpu_seconds(workers),
            postgres_cpu_seconds(),
            time.process_time(),
        )
        if label == "settled":
            marks["rss"] = (rss_mb(workers), 0, 0, 0)

    prefix = f"b{uuid.uuid4().hex[:8]}"  # fresh users
    run = Run(server.address, load, prefix, after=after, feed=feed)
    tally = asyncio.run(run.drive(mark))
    messages = load.sockets * load.messages
    (t0, w0, p0, c0), (t1, w1, p1, c1) = marks["start"], marks["settled"]
    lost, doubled = _lost_and_doubled(server.url, after, tally) if feed else (0, 0)
    return Figures(
        load=name,
        app=server.name,
        messages=messages,
        seconds=t1 - t0,
        ack_p50_ms=statistics.median(tally.acks),
        ack_p99_ms=percentile(tally.acks, 0.99),
        delivery_p50_ms=statistics.median(tally.deliveries) if feed else None,
        delivery_p99_ms=percentile(tally.deliveries, 0.99) if feed else None,
        lost=lost if feed else None,
        doubled=doubled if feed else None,
        errors=tally.errors + tally.idle_frames,
        worker_cpu_ms_per_message=(w1 - w0) * 1000 / messages,
        postgres_cpu_ms_per_message=(p1 - p0) * 1000 / messages,
        client_cpu_ms_per_message=(c1 - c0) * 1000 / messages,
        worker_rss_mb=marks["rss"][0],
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
    for load in dict.fromkeys(f.load for f in figures):
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
    wrong = sum((f.lost or 0) + (f.doubled or 0) + f.errors for f in figures)
    lines.append(_verdict(f"events lost or doubled, errors: {wrong} (none)", not wrong))
    return lines


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
    type=click.Choice(["full", "reconnect", "light", "light+idle"]),
    help="Run only these loads (repeat the option); all four by default.",
)
@click.option("--postgres", "dsn", default=POSTGRES_DSN, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def main(
    *,
    users: int,
    light_users: int,
    idle: int,
    only: tuple[str, ...],
    dsn: str,
    json_path: Path | None,
) -> None:
    """Measure the README's FastAPI app beside the same app without its feed."""
    app = recipe()
    chosen = {
        label: load
        for label, load in loads(users, light_users, idle).items()
        if not only or label in only
    }
    figures: list[Figures] = []
    with (
        postgres_schema(dsn, "postgres") as with_feed,
        postgres_schema(dsn, "postgres") as floor_schema,
        serving("app", app, f"{dsn}?schema={with_feed}") as server,
        serving("floor", without_feed(app), f"{dsn}?schema={floor_schema}") as floor,
    ):
        for label, (_, load) in chosen.items():
            for each in (server, floor):
                figures.append(measure(each, label, load))
                print(f"{label}, {each.name}: done", file=sys.stderr)
    render(figures, {label: what for label, (what, _) in chosen.items()})
    if json_path is not None:
        json_path.write_text(json.dumps([asdict(f) for f in figures], indent=2))


if __name__ == "__main__":
    main()
