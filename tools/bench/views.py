"""Benchmark of the views: catch-up and rebuild against the raw cost of the work.

    python -m tools.bench.views [--backend sqlite|postgres|all] [--events N]
                                [--postgres-events N] [--json FILE]

In one run per backend: write N events (a simulated chat, appended in large
batches, each event with a small metadata value), then time the floor (read the
same stored events with the plain driver, decode each with msgpack, insert one row
per event into a plain table, committing every 1,000), the ledger's decoder alone
(read and decode every event as the views do, writing nothing), a catch-up of all
views from nothing, and a rebuild of all views.
The resident memory is sampled during the rebuild to show it stays flat.
"""

import json
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click
import msgpack
import psycopg
from rich.console import Console
from rich.table import Table

from ledger._domain.contexts import UserContexts, UserSnapshot
from ledger._store.application import (
    SNAPSHOT_INTERVAL,
    LedgerApplication,
    open_application,
)
from ledger._store.urls import storage_for
from ledger.log_source import LogSource, locate
from projections import Projections
from tools.bench.api import POSTGRES_DSN, postgres_schema, rss_mb

FLOOR_BATCH = 1000
WRITE_BATCH = 5000


@dataclass
class ViewsResult:
    backend: str
    events: int
    floor_events_per_s: float
    decode_events_per_s: float
    catch_up_events_per_s: float
    rebuild_events_per_s: float
    rebuild_over_floor: float
    decode_over_floor: float
    rebuild_rss_mb_at_10_percent: float
    rebuild_rss_mb_at_end: float


def write_events(
    url: str, events: int, seed: int, *, snapshots: bool = False, prefix: str = "user"
) -> int:
    """Appends about ``events`` events of a simulated chat; returns how many.

    With ``snapshots``, each user's snapshots are stored as the ledger stores them
    (when a save crosses a multiple of SNAPSHOT_INTERVAL). User ids start with
    ``prefix`` (shards of one ledger need users of their own)."""
    rng = random.Random(seed)
    application = open_application(storage_for(url))
    users: dict[str, UserContexts] = {}
    now = datetime(2026, 1, 1, tzinfo=UTC)
    written = 0
    pending: list[Any] = []
    taken: list[Any] = []
    while written + len(pending) < events:
        user = f"{prefix}-{int(rng.paretovariate(1.1)) % 20_000:05d}"
        aggregate = users.get(user) or users.setdefault(
            user, UserContexts.start(user, now)
        )
        now += timedelta(milliseconds=50)
        context = aggregate.open(
            f"thread-{rng.randrange(4)}",
            run_id=f"run-{rng.randrange(1000)}",
            metadata={"turn": rng.randrange(100)},
            ttl_seconds=1800.0,
            default_ttl_seconds=None,
            now=now,
            limit=10,
        )
        if rng.random() < 0.1:
            aggregate.clear(context.context_id, reason="closed", now=now)
        new = aggregate.collect_events()
        pending.extend(new)
        before = aggregate.version - len(new)
        if snapshots and (
            aggregate.version // SNAPSHOT_INTERVAL > before // SNAPSHOT_INTERVAL
        ):
            taken.append(UserSnapshot.take(aggregate))
        if len(pending) >= WRITE_BATCH:
            written += _put(application, pending)
            pending = []
    written += _put(application, pending)
    if taken and application.snapshots is not None:
        application.snapshots.put(taken)
    application.close()
    return written


def _put(application: LedgerApplication, events: list[Any]) -> int:
    if events:
        application.events.put(events)
    return len(events)


def sqlite_floor(path: str) -> float:
    """Events per second: read, decode and insert, with plain sqlite3."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("DROP TABLE IF EXISTS floor_rows")
    connection.execute(
        "CREATE TABLE floor_rows (position INTEGER PRIMARY KEY, n INTEGER)"
    )
    start, after, count = time.perf_counter(), 0, 0
    while True:
        rows = connection.execute(
            "SELECT rowid, state FROM stored_events WHERE rowid > ? ORDER BY rowid "
            "LIMIT ?",
            (after, FLOOR_BATCH),
        ).fetchall()
        if not rows:
            break
        decoded = [(position, len(msgpack.unpackb(state))) for position, state in rows]
        connection.execute("BEGIN")
        connection.executemany("INSERT INTO floor_rows VALUES (?, ?)", decoded)
        connection.execute("COMMIT")
        after, count = rows[-1][0], count + len(rows)
    elapsed = time.perf_counter() - start
    connection.execute("DROP TABLE floor_rows")
    connection.close()
    return count / elapsed


def postgres_floor(dsn: str, schema: str) -> float:
    """Events per second: read, decode and insert, with plain psycopg."""
    with psycopg.connect(dsn) as connection:
        connection.execute(f'SET search_path TO "{schema}"')
        connection.execute(
            "CREATE TABLE floor_rows (position BIGINT PRIMARY KEY, n INT)"
        )
        connection.commit()
        start, after, count = time.perf_counter(), 0, 0
        while True:
            rows = connection.execute(
                "SELECT notification_id, state FROM ctxledger_events "
                "WHERE notification_id > %s ORDER BY notification_id LIMIT %s",
                (after, FLOOR_BATCH),
            ).fetchall()
            if not rows:
                break
            decoded = [(p, len(msgpack.unpackb(state))) for p, state in rows]
            with connection.cursor() as cursor:
                cursor.executemany("INSERT INTO floor_rows VALUES (%s, %s)", decoded)
            connection.commit()
            after, count = rows[-1][0], count + len(rows)
        elapsed = time.perf_counter() - start
        connection.execute("DROP TABLE floor_rows")
        connection.commit()
    return count / elapsed


def decode_rate(url: str) -> float:
    """Events per second: read and decode the log as the views do (the ledger's
    decoder, ``LogSource.batch``), writing nothing: the part of a rebuild that
    is the decoder's."""
    source = LogSource.open(locate(url), create=False)
    try:
        head, after, count = source.head(), 0, 0
        start = time.perf_counter()
        while after < head:
            events = source.batch(after, FLOOR_BATCH, head).events
            if not events:
                break
            after, count = events[-1][0], count + len(events)
        return count / (time.perf_counter() - start)
    finally:
        source.close()


def measure_views(url: str, events: int) -> tuple[float, float, float, float]:
    """Catch-up and rebuild events/s; RSS at 10% of the rebuild and at its end."""
    with Projections.open(url) as views:
        start = time.perf_counter()
        views.catch_up()
        catch_up = events / (time.perf_counter() - start)
        samples: list[tuple[int, float]] = []
        done = [0]

        def sample(step: int) -> None:
            done[0] += step
            samples.append((done[0], rss_mb()))

        start = time.perf_counter()
        views.rebuild(on_batch=sample)
        rebuild = events / (time.perf_counter() - start)
    early = next(rss for position, rss in samples if position >= events // 10)
    return catch_up, rebuild, early, samples[-1][1]


def run_backend(
    backend: str, url: str, events: int, seed: int, floor: Callable[[], float]
) -> ViewsResult:
    written = write_events(url, events, seed)
    floor_rate = floor()
    decode = decode_rate(url)
    catch_up, rebuild, early, end = measure_views(url, written)
    return ViewsResult(
        backend=backend,
        events=written,
        floor_events_per_s=round(floor_rate),
        decode_events_per_s=round(decode),
        catch_up_events_per_s=round(catch_up),
        rebuild_events_per_s=round(rebuild),
        rebuild_over_floor=round(rebuild / floor_rate, 2),
        decode_over_floor=round(decode / floor_rate, 2),
        rebuild_rss_mb_at_10_percent=round(early, 1),
        rebuild_rss_mb_at_end=round(end, 1),
    )


@contextmanager
def sqlite_file() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as folder:
        yield str(Path(folder) / "bench.db")


def render(results: list[ViewsResult], console: Console) -> None:
    table = Table("figure", *(r.backend for r in results), title="views benchmark")
    for name in asdict(results[0]):
        if name != "backend":
            table.add_row(name, *(f"{asdict(r)[name]:,}" for r in results))
    console.print(table)


@click.command()
@click.option(
    "--backend", type=click.Choice(["sqlite", "postgres", "all"]), default="all"
)
@click.option("--events", default=1_000_000, show_default=True, help="SQLite events.")
@click.option("--postgres-events", default=200_000, show_default=True)
@click.option("--seed", default=1, show_default=True)
@click.option("--postgres", "dsn", default=POSTGRES_DSN, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def main(
    *,
    backend: str,
    events: int,
    postgres_events: int,
    seed: int,
    dsn: str,
    json_path: Path | None,
) -> None:
    """Catch-up and rebuild of all views, beside the floor of the same work."""
    results = []
    if backend in ("sqlite", "all"):
        with sqlite_file() as path:
            results.append(
                run_backend(
                    "sqlite",
                    f"sqlite:///{path}",
                    events,
                    seed,
                    lambda: sqlite_floor(path),
                )
            )
    if backend in ("postgres", "all"):
        with postgres_schema(dsn, "postgres") as schema:
            url = f"{dsn}?schema={schema}"
            results.append(
                run_backend(
                    "postgres",
                    url,
                    postgres_events,
                    seed,
                    lambda: postgres_floor(dsn, schema),
                )
            )
    render(results, Console())
    if json_path is not None:
        json_path.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
