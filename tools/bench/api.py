"""Benchmark of the domain API against the raw cost of the same storage work.

    python -m tools.bench.api [--backend sqlite|postgres|all] [--json FILE]

For each backend, in one run: open_context on the new-context path, on the reuse
path (warm, with a small metadata patch, which is sealed under the user's key),
the same reuse path with a master key wrapping the keys, get_context, and the
floor: a bare single-row INSERT and COMMIT with the same durability settings
(sqlite3 on a WAL file; psycopg on the same server).
Then the resident memory growth over many calls spread over many users.
"""

import json
import random
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import click
import psycopg
from psycopg import sql
from rich.console import Console
from rich.table import Table

from ledger import ContextLedger
from ledger._store.urls import SQLITE_LOCK_TIMEOUT_SECONDS

POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"
PAYLOAD = b"x" * 200  # about the size of an encoded reuse event


@dataclass
class Latency:
    """Per-call latency in milliseconds."""

    calls: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float

    @classmethod
    def of(cls, samples_ns: list[int]) -> "Latency":
        ms = sorted(sample / 1e6 for sample in samples_ns)
        return cls(
            calls=len(ms),
            p50_ms=round(ms[len(ms) // 2], 3),
            p95_ms=round(ms[min(len(ms) - 1, int(len(ms) * 0.95))], 3),
            p99_ms=round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 3),
            mean_ms=round(statistics.fmean(ms), 3),
        )


@dataclass
class BackendResult:
    backend: str
    new_context: Latency
    reuse: Latency
    reuse_master_key: Latency
    get_context: Latency
    floor_insert_commit: Latency
    reuse_p50_over_floor: float
    reuse_master_key_p50_over_floor: float
    memory_calls: int = 0
    memory_users: int = 0
    rss_growth_mb: float = 0.0
    checks: dict[str, bool] = field(default_factory=dict)


def timed(calls: Iterator[Callable[[], object]]) -> list[int]:
    samples = []
    for call in calls:
        start = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - start)
    return samples


def rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4096 / 2**20


def sqlite_floor_connection(path: Path) -> sqlite3.Connection:
    """A connection to the floor's WAL file, with its table, set up as the recorder's.

    eventsourcing's SQLite recorder sets journal_mode=WAL and leaves synchronous at
    SQLite's default (FULL); it waits on a busy file up to the ledger's lock timeout.
    """
    db = sqlite3.connect(
        path, isolation_level=None, timeout=SQLITE_LOCK_TIMEOUT_SECONDS
    )
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS rows "
        "(id TEXT, version INTEGER, topic TEXT, state BLOB)"
    )
    return db


def sqlite_insert(db: sqlite3.Connection, n: int) -> None:
    """The floor's call: a single-row INSERT and COMMIT."""
    db.execute("BEGIN")
    db.execute("INSERT INTO rows VALUES (?, ?, ?, ?)", (str(n), n, "t", PAYLOAD))
    db.execute("COMMIT")


def sqlite_floor(folder: Path, samples: int) -> list[int]:
    """Single-row INSERT and COMMIT on a WAL file, as the ledger's SQLite store does."""
    db = sqlite_floor_connection(folder / "floor.db")
    try:
        return timed(partial(sqlite_insert, db, n) for n in range(samples))
    finally:
        db.close()


def create_postgres_floor(db: psycopg.Connection[Any], schema: str) -> sql.Composed:
    """Creates the floor's table in ``schema``; returns its INSERT statement."""
    create = (
        "CREATE TABLE IF NOT EXISTS {} (id text, version int, topic text, state bytea)"
    )
    db.execute(sql.SQL(create).format(sql.Identifier(schema, "rows")))
    db.commit()
    return postgres_floor_statement(schema)


def postgres_floor_statement(schema: str) -> sql.Composed:
    """The floor's INSERT into its table in ``schema``."""
    return sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, %s)").format(
        sql.Identifier(schema, "rows")
    )


def postgres_insert(
    db: psycopg.Connection[Any], statement: sql.Composed, n: int
) -> None:
    """The floor's call: a single-row INSERT and COMMIT."""
    db.execute(statement, (str(n), n, "t", PAYLOAD))
    db.commit()


def postgres_floor(dsn: str, schema: str, samples: int) -> list[int]:
    """Single-row INSERT and COMMIT with psycopg on the same server."""
    with psycopg.connect(dsn) as db:
        statement = create_postgres_floor(db, schema)
        return timed(partial(postgres_insert, db, statement, n) for n in range(samples))


MASTER_KEY = "2f" * 32


def measure_api(
    url: str,
    users: int,
    threads: int,
    samples: int,
    seed: int,
    *,
    master_key: str | None = None,
) -> tuple[Latency, Latency, Latency]:
    rng = random.Random(seed)
    pairs = [(f"user-{u}", f"thread-{t}") for u in range(users) for t in range(threads)]
    with ContextLedger.open(
        url, max_contexts_per_user=threads, master_key=master_key
    ) as ledger:
        created = timed(
            partial(ledger.open_context, u, t, run_id="run-1", metadata={"lang": "en"})
            for u, t in pairs
        )
        picks = [rng.choice(pairs) for _ in range(samples)]
        reused = timed(
            partial(
                ledger.open_context,
                u,
                t,
                run_id=f"run-{n}",
                metadata={"last_message": f"message {n}"},
            )
            for n, (u, t) in enumerate(picks)
        )
        read = timed(partial(ledger.get_context, u, t) for u, t in picks)
    return Latency.of(created), Latency.of(reused), Latency.of(read)


def measure_memory(url: str, calls: int, users: int, seed: int) -> float:
    rng = random.Random(seed)
    with ContextLedger.open(url) as ledger:
        for n in range(200):  # load code paths before the baseline
            ledger.open_context(f"warm-{n}", "t")
        before = rss_mb()
        for n in range(calls):
            ledger.open_context(f"mem-user-{rng.randrange(users)}", f"t{n % 3}")
        return round(rss_mb() - before, 1)


@contextmanager
def postgres_schema(dsn: str, backend: str) -> Iterator[str]:
    """A fresh schema for a PostgreSQL run, dropped afterwards; none for SQLite."""
    schema = f"ctxl_bench_{uuid.uuid4().hex[:10]}"
    if backend != "postgres":
        yield schema
        return
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield schema
    finally:
        with psycopg.connect(dsn, autocommit=True) as db:
            db.execute(f'DROP SCHEMA "{schema}" CASCADE')


def run_backend(
    backend: str, options: dict[str, int], dsn: str, console: Console
) -> BackendResult:
    users, threads, samples = options["users"], options["threads"], options["samples"]
    with tempfile.TemporaryDirectory() as tmp, postgres_schema(dsn, backend) as schema:
        folder = Path(tmp)
        if backend == "sqlite":
            url = f"sqlite:///{folder / 'bench.db'}"
            wrapped_url = f"sqlite:///{folder / 'wrapped.db'}"
            memory_url = f"sqlite:///{folder / 'memory.db'}"
        else:
            url = f"{dsn}?schema={schema}"
            wrapped_url = f"{dsn}?schema={schema}_w"
            memory_url = f"{dsn}?schema={schema}_m"
        console.print(
            f"[{backend}] {users} users x {threads} threads, {samples} samples"
        )
        new, reuse, read = measure_api(url, users, threads, samples, options["seed"])
        _, wrapped, _ = measure_api(
            wrapped_url, users, threads, samples, options["seed"], master_key=MASTER_KEY
        )
        if backend == "sqlite":
            floor = Latency.of(sqlite_floor(folder, samples))
        else:
            floor = Latency.of(postgres_floor(dsn, schema, samples))
            with psycopg.connect(dsn, autocommit=True) as db:
                db.execute(f'DROP SCHEMA IF EXISTS "{schema}_w" CASCADE')
        result = BackendResult(
            backend,
            new,
            reuse,
            wrapped,
            read,
            floor,
            round(reuse.p50_ms / floor.p50_ms, 2),
            round(wrapped.p50_ms / floor.p50_ms, 2),
        )
        if options["memory_calls"]:
            console.print(f"{backend}: memory: {options['memory_calls']} calls")
            result.memory_calls = options["memory_calls"]
            result.memory_users = options["memory_users"]
            result.rss_growth_mb = measure_memory(
                memory_url,
                options["memory_calls"],
                options["memory_users"],
                options["seed"],
            )
            if backend == "postgres":
                with psycopg.connect(dsn, autocommit=True) as db:
                    db.execute(f'DROP SCHEMA IF EXISTS "{schema}_m" CASCADE')
    result.checks = {
        "reuse p50 <= 1 ms": reuse.p50_ms <= 1.0,
        "reuse p50 <= 3x floor": result.reuse_p50_over_floor <= 3.0,
        "reuse p50 <= 1 ms (master key)": wrapped.p50_ms <= 1.0,
        "reuse p50 <= 3x floor (master key)": (
            result.reuse_master_key_p50_over_floor <= 3.0
        ),
        "reuse p99 <= 5 ms": reuse.p99_ms <= 5.0,
    }
    if result.memory_calls:
        result.checks["RSS growth <= 150 MB"] = result.rss_growth_mb <= 150
    return result


def render(results: list[BackendResult], console: Console) -> None:
    table = Table("figure", *(r.backend for r in results), title="ctxledger benchmark")
    for label, name in (
        ("open_context, new context", "new_context"),
        ("open_context, reuse (warm)", "reuse"),
        ("open_context, reuse (warm), master key", "reuse_master_key"),
        ("get_context", "get_context"),
        ("floor: bare INSERT + COMMIT", "floor_insert_commit"),
    ):
        figures: list[Latency] = [getattr(r, name) for r in results]
        table.add_row(
            f"{label}: p50 / p99 ms",
            *(f"{f.p50_ms:.3f} / {f.p99_ms:.3f}" for f in figures),
        )
    table.add_row(
        "reuse p50 / floor p50", *(f"{r.reuse_p50_over_floor:.2f}x" for r in results)
    )
    table.add_row(
        "reuse p50 / floor p50, master key",
        *(f"{r.reuse_master_key_p50_over_floor:.2f}x" for r in results),
    )
    table.add_row(
        "RSS growth over calls / users",
        *(
            f"{r.rss_growth_mb} MB over {r.memory_calls} / {r.memory_users}"
            for r in results
        ),
    )
    for check in results[0].checks:
        table.add_row(
            check, *("met" if r.checks.get(check) else "NOT MET" for r in results)
        )
    console.print(table)


@click.command()
@click.option(
    "--backend", type=click.Choice(["sqlite", "postgres", "all"]), default="all"
)
@click.option("--users", default=1000, show_default=True)
@click.option("--threads", default=5, show_default=True)
@click.option("--samples", default=5000, show_default=True)
@click.option("--memory-calls", default=200_000, show_default=True)
@click.option("--memory-users", default=50_000, show_default=True)
@click.option("--seed", default=1, show_default=True)
@click.option("--postgres", "dsn", default=POSTGRES_DSN, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def main(
    *,
    backend: str,
    users: int,
    threads: int,
    samples: int,
    memory_calls: int,
    memory_users: int,
    seed: int,
    dsn: str,
    json_path: Path | None,
) -> None:
    """Measure the domain API beside the storage floor and print the figures."""
    console = Console()
    options = {
        "users": users,
        "threads": threads,
        "samples": samples,
        "memory_calls": memory_calls,
        "memory_users": memory_users,
        "seed": seed,
    }
    backends = ["sqlite", "postgres"] if backend == "all" else [backend]
    results = [run_backend(name, options, dsn, console) for name in backends]
    render(results, console)
    if json_path:
        json_path.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
