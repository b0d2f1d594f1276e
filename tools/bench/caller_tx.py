"""Appends in the caller's PostgreSQL transaction (``connection=``) beside the
ledger's own, and beside the raw cost of the same storage work.

    python -m tools.bench.caller_tx [--calls N] [--users N] [--postgres URL]
                                    [--json FILE]

In one run, the calls of every figure taken in turns (a round times one call of
each, in a shuffled order), each figure on users of its own:

- ``open_context`` on the reuse path (warm, with a one-key metadata patch) and
  on the new-context path (a new thread of a warm user), by the ledger in its
  own transaction;
- the same calls with ``connection=`` in the caller's transaction, followed by
  the caller's COMMIT (which the ledger's own call pays too);
- the floor: the caller's transaction doing one INSERT of a row of about the
  size of an event into a plain table, and COMMIT;
- an application's pattern: its own INSERT of a message row, the ledger's call
  with ``connection=``, and COMMIT (one transaction), against its INSERT and
  COMMIT followed by the ledger's own call (two transactions).

The target: an append in the caller's transaction no slower than the ledger's
own (p50). Runs in a fresh schema, dropped afterwards.
"""

import argparse
import json
import os
import random
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ledger import ContextLedger
from tools.bench.api import PAYLOAD, POSTGRES_DSN, Latency

THREADS = 4
WARM_ROUNDS = 50
TARGET = 1.0  # caller-tx p50 / own p50
FIGURES = (
    ("own_reuse", "open_context, reuse, ledger's own transaction"),
    ("caller_reuse", "open_context, reuse, connection= + COMMIT"),
    ("own_new", "open_context, new context, ledger's own transaction"),
    ("caller_new", "open_context, new context, connection= + COMMIT"),
    ("floor", "floor: INSERT of an event-size row + COMMIT"),
    ("app_one_tx", "app: INSERT message + connection= call + COMMIT"),
    ("app_two_tx", "app: INSERT message + COMMIT, then the ledger's own call"),
)
RATIOS = (
    ("caller_reuse / own_reuse", "caller_reuse", "own_reuse"),
    ("caller_new / own_new", "caller_new", "own_new"),
    ("app_one_tx / app_two_tx", "app_one_tx", "app_two_tx"),
    ("own_reuse / floor", "own_reuse", "floor"),
    ("caller_reuse / floor", "caller_reuse", "floor"),
)


@dataclass
class CallerTxResult:
    calls: int
    users: int
    figures: dict[str, Latency]
    p50_ratios: dict[str, float]
    p95_ratios: dict[str, float]
    targets: dict[str, bool] = field(default_factory=dict)


class Workload:
    """One call of each figure at a time, on the figure's own users."""

    def __init__(
        self, ledger: ContextLedger, conn: psycopg.Connection[Any], schema: str
    ) -> None:
        self.ledger = ledger
        self.conn = conn
        self.schema = schema
        self.floor_insert = sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, %s)").format(
            sql.Identifier(schema, "rows")
        )
        self.message_insert = sql.SQL("INSERT INTO {} VALUES (%s, %s, %s)").format(
            sql.Identifier(schema, "messages")
        )
        self.users = 0
        self.new_threads: dict[str, int] = {}

    def create_tables(self) -> None:
        for table, columns in (
            ("rows", "id text, version int, topic text, state bytea"),
            ("messages", "id text PRIMARY KEY, user_id text, body text"),
        ):
            self.conn.execute(
                sql.SQL("CREATE TABLE {} ({})").format(
                    sql.Identifier(self.schema, table), sql.SQL(columns)
                )
            )
        self.conn.commit()

    def warm(self, users: int) -> None:
        """Each figure's users open their threads first."""
        self.users = users
        for figure, _ in FIGURES:
            for u in range(users):
                for t in range(THREADS):
                    self.ledger.open_context(f"{figure}-{u}", f"thread-{t}")

    def call(self, figure: str, n: int, rng: random.Random) -> Callable[[], None]:
        """The call of ``figure``, ready to time."""
        user = f"{figure}-{rng.randrange(self.users)}"
        thread = f"thread-{rng.randrange(THREADS)}"
        if figure.endswith("_new"):
            thread = self._new_thread(user)
        patch = {"last_message": f"message {n}"}
        calls: dict[str, Callable[[], None]] = {
            "own_reuse": lambda: self._own(user, thread, n, patch),
            "own_new": lambda: self._own(user, thread, n, patch),
            "caller_reuse": lambda: self._in_caller(user, thread, n, patch),
            "caller_new": lambda: self._in_caller(user, thread, n, patch),
            "floor": lambda: self._floor(n),
            "app_one_tx": lambda: self._app_one(user, thread, n, patch),
            "app_two_tx": lambda: self._app_two(user, thread, n, patch),
        }
        return calls[figure]

    def _new_thread(self, user: str) -> str:
        count = self.new_threads.get(user, 0)
        self.new_threads[user] = count + 1
        return f"new-{count}"

    def _own(self, user: str, thread: str, n: int, patch: dict[str, str]) -> None:
        self.ledger.open_context(user, thread, run_id=f"run-{n}", metadata=patch)

    def _in_caller(self, user: str, thread: str, n: int, patch: dict[str, str]) -> None:
        self.ledger.open_context(
            user, thread, run_id=f"run-{n}", metadata=patch, connection=self.conn
        )
        self.conn.commit()

    def _floor(self, n: int) -> None:
        self.conn.execute(self.floor_insert, (str(n), n, "t", PAYLOAD))
        self.conn.commit()

    def _message(self, user: str, n: int) -> None:
        self.conn.execute(self.message_insert, (f"m-{n}", user, PAYLOAD.decode()))

    def _app_one(self, user: str, thread: str, n: int, patch: dict[str, str]) -> None:
        self._message(user, n)
        self._in_caller(user, thread, n, patch)

    def _app_two(self, user: str, thread: str, n: int, patch: dict[str, str]) -> None:
        self._message(user, n)
        self.conn.commit()
        self._own(user, thread, n, patch)


@contextmanager
def fresh_schema(dsn: str) -> Iterator[str]:
    """A schema of this run's own, dropped afterwards."""
    schema = f"ctxl_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        yield schema
    finally:
        with psycopg.connect(dsn, autocommit=True) as db:
            db.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def measure(dsn: str, calls: int, users: int, seed: int) -> dict[str, list[int]]:
    """Per figure, the time of each of ``calls`` calls in nanoseconds."""
    rng = random.Random(seed)
    samples: dict[str, list[int]] = {figure: [] for figure, _ in FIGURES}
    order = [figure for figure, _ in FIGURES]
    with (
        fresh_schema(dsn) as schema,
        ContextLedger.open(
            f"{dsn}?schema={schema}", max_contexts_per_user=THREADS + calls
        ) as ledger,
        psycopg.connect(dsn) as conn,
    ):
        work = Workload(ledger, conn, schema)
        work.create_tables()
        work.warm(users)
        for n in range(-WARM_ROUNDS * len(order), calls * len(order)):
            if n % len(order) == 0:
                rng.shuffle(order)
            figure = order[n % len(order)]
            call = work.call(figure, n + WARM_ROUNDS * len(order), rng)
            start = time.perf_counter_ns()
            call()
            took = time.perf_counter_ns() - start
            if n >= 0:
                samples[figure].append(took)
    return samples


def result_of(samples: dict[str, list[int]], calls: int, users: int) -> CallerTxResult:
    figures = {figure: Latency.of(values) for figure, values in samples.items()}
    p50 = {
        name: round(figures[a].p50_ms / figures[b].p50_ms, 2) for name, a, b in RATIOS
    }
    p95 = {
        name: round(figures[a].p95_ms / figures[b].p95_ms, 2) for name, a, b in RATIOS
    }
    targets = {
        "caller-tx reuse p50 <= own reuse p50": p50["caller_reuse / own_reuse"]
        <= TARGET,
        "caller-tx new p50 <= own new p50": p50["caller_new / own_new"] <= TARGET,
        "one transaction p50 <= two transactions p50": p50["app_one_tx / app_two_tx"]
        <= TARGET,
    }
    return CallerTxResult(calls, users, figures, p50, p95, targets)


def render(result: CallerTxResult) -> str:
    width = max(len(label) for _, label in FIGURES)
    lines = [
        f"PostgreSQL, {result.calls} calls a figure, {result.users} users x "
        f"{THREADS} threads a figure",
        f"{'figure':<{width}}  p50 ms   p95 ms",
    ]
    for figure, label in FIGURES:
        f = result.figures[figure]
        lines.append(f"{label:<{width}}  {f.p50_ms:6.3f}   {f.p95_ms:6.3f}")
    lines.append(f"{'ratio':<{width}}  p50      p95")
    for name, _, _ in RATIOS:
        p50, p95 = result.p50_ratios[name], result.p95_ratios[name]
        lines.append(f"{name:<{width}}  {p50:5.2f}x   {p95:5.2f}x")
    for target, met in result.targets.items():
        lines.append(f"{target}: {'met' if met else 'NOT MET'}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls a figure")
    parser.add_argument("--users", type=int, default=100, help="users a figure")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--postgres",
        default=os.environ.get("CTXLEDGER_TEST_POSTGRES", POSTGRES_DSN),
        help="the server (default: $CTXLEDGER_TEST_POSTGRES or %(default)s)",
    )
    parser.add_argument("--json", type=Path, help="write the figures to FILE")
    options = parser.parse_args()
    if options.calls < 1 or options.users < 1:
        parser.error("--calls and --users must be at least 1")
    samples = measure(options.postgres, options.calls, options.users, options.seed)
    result = result_of(samples, options.calls, options.users)
    print(render(result))
    if options.json:
        options.json.write_text(json.dumps(asdict(result), indent=2))


if __name__ == "__main__":
    main()
