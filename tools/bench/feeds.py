"""What idle change feeds cost: one process with 10 and with 10,000 idle per-user
feeds (asyncio, each awaiting its next event) while another process writes 2,000
events of other users.

    python -m tools.bench.feeds [--events N] [--feeds 10,10000] [--backend all]

The listening process also holds one feed of all users, which tells it when the
writer's last event has arrived; its CPU time (user + system, from
``resource.getrusage``) is measured from the writer's start to that moment.
The floor is the same process with that one feed and no idle feeds. Target: the
CPU with 10,000 idle feeds at most 1.2x the CPU with 10.
"""

import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import click
import psycopg
from psycopg import sql
from rich.console import Console
from rich.table import Table

from ledger import AsyncContextLedger, ContextLedger

WRITERS_USERS = 50
TARGET = 1.2


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _listen(url: str, feeds: int, events: int) -> None:
    async with AsyncContextLedger.open(url) as ledger:
        idle = [ledger.changes(f"idle-{n}") for n in range(feeds)]
        await asyncio.gather(*[feed.start() for feed in idle])
        waiting = [asyncio.create_task(anext(feed)) for feed in idle]
        async with ledger.changes() as everyone:
            await asyncio.sleep(1.0)  # settled: every task waits
            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
            cpu, started = _cpu(), time.perf_counter()
            seen = 0
            while seen < events:
                await anext(everyone)
                seen += 1
            result = {
                "cpu": _cpu() - cpu,
                "seconds": time.perf_counter() - started,
                "woken": sum(task.done() for task in waiting),
            }
        for task in waiting:
            task.cancel()
        print(json.dumps(result), flush=True)


def _write(url: str, events: int) -> None:
    with ContextLedger.open(url) as ledger:
        for n in range(events):
            ledger.open_context(
                f"writer-{n % WRITERS_USERS}", f"t{n % 3}", run_id=f"r{n}"
            )


def measure(url: str, feeds: int, events: int) -> dict[str, float]:
    """One listening process with ``feeds`` idle feeds, while this one writes."""
    with ContextLedger.open(url) as ledger:
        ledger.open_context("writer-0", "t0")  # tables exist before the listener
    command = [sys.executable, "-m", "tools.bench.feeds", "--listen", url]
    listener = subprocess.Popen(  # noqa: S603  (this module, in another process)
        [*command, str(feeds), "--events", str(events)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert listener.stdin is not None  # noqa: S101  (PIPE)
        assert listener.stdout is not None  # noqa: S101  (PIPE)
        if listener.stdout.readline().strip() != "ready":
            raise click.ClickException("the listening process did not start")
        listener.stdin.write("go\n")
        listener.stdin.flush()
        _write(url, events)
        result: dict[str, float] = json.loads(listener.stdout.readline())
    finally:
        listener.kill()
        listener.wait()
    return result


def _fresh_postgres(base: str) -> tuple[str, str]:
    schema = f"bench_feeds_{uuid.uuid4().hex[:8]}"
    return f"{base}?schema={schema}", schema


def _drop(base: str, schema: str) -> None:
    with psycopg.connect(base, autocommit=True) as connection:
        connection.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )


def run_backend(
    backend: str, postgres: str, counts: list[int], events: int
) -> list[tuple[int, dict[str, float]]]:
    rows = []
    for feeds in counts:
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as folder:
                url = f"sqlite:///{Path(folder) / 'feeds.db'}"
                rows.append((feeds, measure(url, feeds, events)))
        else:
            url, schema = _fresh_postgres(postgres)
            try:
                rows.append((feeds, measure(url, feeds, events)))
            finally:
                _drop(postgres, schema)
    return rows


@click.command()
@click.option("--events", default=2000, show_default=True)
@click.option("--feeds", "counts", default="0,10,10000", show_default=True)
@click.option(
    "--backend",
    type=click.Choice(["all", "sqlite", "postgres"]),
    default="all",
    show_default=True,
)
@click.option(
    "--postgres",
    default="postgresql://postgres@127.0.0.1:5432/test",
    show_default=True,
)
@click.option("--listen", nargs=2, type=(str, int), default=None, hidden=True)
def main(
    events: int,
    counts: str,
    backend: str,
    postgres: str,
    listen: tuple[str, int] | None,
) -> None:
    if listen is not None:
        asyncio.run(_listen(listen[0], listen[1], events))
        return
    wanted = [int(count) for count in counts.split(",")]
    console = Console()
    table = Table(title=f"idle feeds while another process writes {events} events")
    for column in (
        "backend",
        "idle feeds",
        "CPU s",
        "CPU / event",
        "vs 10 feeds",
        "delivered in s",
        "idle woken",
    ):
        table.add_column(column)
    backends = ["sqlite", "postgres"] if backend == "all" else [backend]
    for name in backends:
        rows = run_backend(name, postgres, wanted, events)
        base = dict(rows).get(10)
        for feeds, result in rows:
            ratio = "" if base is None else f"{result['cpu'] / base['cpu']:.2f}"
            table.add_row(
                name,
                f"{feeds:,}",
                f"{result['cpu']:.2f}",
                f"{result['cpu'] / events * 1e6:.0f} us",
                ratio,
                f"{result['seconds']:.2f}",
                str(int(result["woken"])),
            )
    console.print(table)
    console.print(f"target: 10,000 idle feeds at most {TARGET}x the CPU of 10")


if __name__ == "__main__":
    main()
