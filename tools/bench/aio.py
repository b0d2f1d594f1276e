"""The asyncio API and the change feed, on SQLite and PostgreSQL.

    python -m tools.bench.aio [--calls N] [--postgres URL] [--backend all]

- Throughput: open_context reuse calls from one thread of the synchronous ledger,
  beside the same calls made concurrently (all at once, ``asyncio.gather``)
  through AsyncContextLedger (its default 8 threads).
- The event loop's worst delay: a task that wakes every 10 ms, while 500
  concurrent calls run (the target: never late by more than 50 ms).
- The change feed's latency: from a call's return to the event reaching a feed
  of another open ledger, over 200 calls made 20 ms apart (the target on
  PostgreSQL: a p50 of at most 250 ms).
"""

import asyncio
import statistics
import tempfile
import threading
import time
import uuid
from pathlib import Path

import click
import psycopg
from psycopg import sql
from rich.console import Console
from rich.table import Table

from ledger import AsyncContextLedger, ContextLedger

USERS = 50


def sync_throughput(url: str, calls: int) -> float:
    with ContextLedger.open(url) as ledger:
        for n in range(USERS):
            ledger.open_context(f"user-{n}", "t")
        started = time.perf_counter()
        for n in range(calls):
            ledger.open_context(f"user-{n % USERS}", "t", run_id=f"r{n}")
        return calls / (time.perf_counter() - started)


async def _async_run(url: str, calls: int) -> tuple[float, float]:
    async with AsyncContextLedger.open(url) as ledger:
        await asyncio.gather(
            *[ledger.open_context(f"user-{n}", "t") for n in range(USERS)]
        )
        started = time.perf_counter()
        await asyncio.gather(
            *[
                ledger.open_context(f"user-{n % USERS}", "t", run_id=f"r{n}")
                for n in range(calls)
            ]
        )
        rate = calls / (time.perf_counter() - started)
        worst = 0.0
        done = asyncio.Event()

        async def tick() -> None:
            nonlocal worst
            while not done.is_set():
                began = time.perf_counter()
                await asyncio.sleep(0.01)
                worst = max(worst, time.perf_counter() - began - 0.01)

        ticker = asyncio.create_task(tick())
        await asyncio.gather(
            *[ledger.open_context(f"user-{n % USERS}", f"t{n % 3}") for n in range(500)]
        )
        done.set()
        await ticker
        return rate, worst


def feed_latency(url: str, calls: int = 200) -> tuple[float, float]:
    """p50 and p99 in ms from a call's return to its event in another ledger's
    feed."""
    returned: dict[str, float] = {}
    arrived: dict[str, float] = {}
    with ContextLedger.open(url) as writer, ContextLedger.open(url) as reader:
        writer.open_context("warm", "t")
        with reader.changes() as feed:

            def read() -> None:
                for _, event in feed:
                    arrived[event.thread_id] = time.perf_counter()
                    if len(arrived) == calls:
                        return

            consumer = threading.Thread(target=read, daemon=True)
            consumer.start()
            for n in range(calls):
                writer.open_context(f"user-{n}", f"t{n}")
                returned[f"t{n}"] = time.perf_counter()
                time.sleep(0.02)
            consumer.join(30)
    waits = sorted((arrived[k] - returned[k]) * 1000 for k in returned if k in arrived)
    return statistics.median(waits), waits[int(len(waits) * 0.99) - 1]


@click.command()
@click.option("--calls", default=2000, show_default=True, type=click.IntRange(100))
@click.option(
    "--backend",
    type=click.Choice(["sqlite", "postgres", "all"]),
    default="all",
    show_default=True,
)
@click.option(
    "--postgres",
    default="postgresql://postgres@127.0.0.1:5432/test",
    show_default=True,
)
def main(calls: int, backend: str, postgres: str) -> None:
    """Measure the asyncio API beside the synchronous one, and the feed."""
    table = Table(
        "backend",
        "sync ops/s (1 thread)",
        "async ops/s (gather)",
        "async / sync",
        "worst loop delay ms",
        "feed p50 / p99 ms",
    )
    kinds = ["sqlite", "postgres"] if backend == "all" else [backend]
    with tempfile.TemporaryDirectory() as folder:
        for kind in kinds:
            # A fresh database for each measure: sync, async and the feed.
            names = [f"bench_aio_{uuid.uuid4().hex[:8]}" for _ in range(3)]
            if kind == "sqlite":
                urls = [f"sqlite:///{Path(folder, name)}.db" for name in names]
            else:
                urls = [f"{postgres}?schema={name}" for name in names]
            try:
                sync = sync_throughput(urls[0], calls)
                rate, worst = asyncio.run(_async_run(urls[1], calls))
                p50, p99 = feed_latency(urls[2])
            finally:
                if kind == "postgres":
                    _drop_schemas(postgres, names)
            table.add_row(
                kind,
                f"{sync:,.0f}",
                f"{rate:,.0f}",
                f"{rate / sync:.2f}x",
                f"{worst * 1000:.1f}",
                f"{p50:.0f} / {p99:.0f}",
            )
    Console().print(table)


def _drop_schemas(dsn: str, schemas: list[str]) -> None:
    """Drops the schemas this benchmark created (and nothing else)."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        for schema in schemas:
            connection.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(schema)
                )
            )


if __name__ == "__main__":
    main()
