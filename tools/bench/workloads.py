"""What one writer process runs: ctxledger's reuse path, or the floor's bare INSERT.

Each is a picklable description; ``steps`` opens the process's own connection,
does the untimed warm-up and yields the call to time.
"""

import random
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import psycopg

from ledger import ContextLedger
from tools.bench.api import (
    postgres_floor_statement,
    postgres_insert,
    sqlite_floor_connection,
    sqlite_insert,
)
from tools.bench.processes import Step

FLOOR_WARM_CALLS = 20


@dataclass(frozen=True)
class Keys:
    """A process's own users and threads, apart from every other process's."""

    run: str
    users: int
    threads: int
    seed: int

    def pairs(self, worker: int) -> list[tuple[str, str]]:
        return [
            (f"{self.run}-w{worker}-user-{u}", f"thread-{t}")
            for u in range(self.users)
            for t in range(self.threads)
        ]

    def picks(self, worker: int, calls: int) -> list[tuple[str, str]]:
        """The pairs that the timed calls touch, at random."""
        rng = random.Random(self.seed * 1000 + worker)
        pairs = self.pairs(worker)
        return [rng.choice(pairs) for _ in range(calls)]


@dataclass(frozen=True)
class LedgerReuse:
    """open_context on contexts the process opened first (the reuse path)."""

    url: str
    keys: Keys

    @contextmanager
    def steps(self, worker: int, calls: int) -> Iterator[Step]:
        limit = self.keys.threads
        with ContextLedger.open(self.url, max_contexts_per_user=limit) as ledger:
            for user, thread in self.keys.pairs(worker):
                ledger.open_context(user, thread, run_id="run-0")
            picks = self.keys.picks(worker, calls)

            def reuse(n: int) -> object:
                user, thread = picks[n]
                return ledger.open_context(user, thread, run_id=f"run-{n + 1}")

            yield reuse


@dataclass(frozen=True)
class SqliteFloor:
    """A bare single-row INSERT and COMMIT on a WAL file."""

    path: Path

    @contextmanager
    def steps(self, worker: int, calls: int) -> Iterator[Step]:
        db = sqlite_floor_connection(self.path)
        try:
            for n in range(FLOOR_WARM_CALLS):
                sqlite_insert(db, -n)
            yield partial(sqlite_insert, db)
        finally:
            db.close()


@dataclass(frozen=True)
class PostgresFloor:
    """A bare single-row INSERT and COMMIT with psycopg, one connection a process."""

    dsn: str
    schema: str

    @contextmanager
    def steps(self, worker: int, calls: int) -> Iterator[Step]:
        statement = postgres_floor_statement(self.schema)
        with psycopg.connect(self.dsn) as db:
            for n in range(FLOOR_WARM_CALLS):
                postgres_insert(db, statement, -n)
            yield partial(postgres_insert, db, statement)
