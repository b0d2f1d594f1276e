"""Threads of one process writing to one SQLite ledger: do they collapse?

    python -m tools.bench.threads [--calls N] [--threads 8]

open_context reuse calls, the same total split over 1 thread and over N threads of
one process, each thread on its own users (``spread``) or all on one user's threads
(``one user``). The target: N threads give at least 0.8x one thread's throughput,
with no ConcurrencyConflict.
"""

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ledger import ContextLedger

USERS = 64
TARGET = 0.8


def throughput(path: Path, threads: int, calls: int, *, one_user: bool) -> float:
    """Reuse calls per second over ``threads`` threads sharing one ledger."""
    with ContextLedger.open(f"sqlite:///{path}") as ledger:
        users = [f"user-{n}" for n in range(USERS)]
        for user in users:
            for thread in range(threads):
                ledger.open_context(user, f"t{thread}")
        share = calls // threads

        def chat(worker: int) -> None:
            for call in range(share):
                user = (
                    users[0] if one_user else users[(worker + call * threads) % USERS]
                )
                ledger.open_context(user, f"t{worker}", run_id=f"r{call}")

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(chat, range(threads)))
        return share * threads / (time.perf_counter() - started)


@click.command()
@click.option("--calls", default=4000, show_default=True, type=click.IntRange(1))
@click.option("--threads", default=8, show_default=True, type=click.IntRange(2))
def main(calls: int, threads: int) -> None:
    """Measure N threads against one on a SQLite file and print the ratios."""
    table = Table("users", "1 thread ops/s", f"{threads} threads ops/s", "ratio", "")
    with tempfile.TemporaryDirectory() as folder:
        for label, one_user in (("spread", False), ("one user", True)):
            single = throughput(
                Path(folder, f"1-{label}.db"), 1, calls, one_user=one_user
            )
            many = throughput(
                Path(folder, f"n-{label}.db"), threads, calls, one_user=one_user
            )
            ratio = many / single
            table.add_row(
                label,
                f"{single:,.0f}",
                f"{many:,.0f}",
                f"{ratio:.2f}x",
                "met" if ratio >= TARGET else "NOT MET",
            )
    Console().print(table)


if __name__ == "__main__":
    main()
