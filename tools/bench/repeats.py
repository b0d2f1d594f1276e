"""Benchmark of repeated request ids beside fresh writes, in one run.

    python -m tools.bench.repeats [--backend sqlite|postgres|all] [--calls N]
                                  [--users N] [--postgres DSN] [--json FILE]

Each user's threads are opened first (warm). Then, in turns: a fresh
``open_context`` on the reuse path with a new request id, and a repeat of one of
the last 50 request ids the same ledger gave (the reconnect storm: a client that
sends again what it sent a moment ago); and a repeat of one of them by a second
ledger on the same store, warmed on the same users: the repeat that lands on
another process, which has not seen the first call. The target: a repeat
in the same process costs at most 1.2x a fresh reuse (p50 and p99).
"""

import json
import random
import tempfile
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ledger import ContextLedger
from tools.bench.api import POSTGRES_DSN, Latency, postgres_schema, timed

TARGET = 1.2
RECENT = 50
THREADS = 4


@dataclass
class RepeatsResult:
    backend: str
    fresh: Latency
    repeat: Latency
    repeat_elsewhere: Latency
    repeat_p50_over_fresh: float
    repeat_p99_over_fresh: float
    elsewhere_p50_over_fresh: float
    targets: dict[str, bool] = field(default_factory=dict)


def measure(url: str, users: int, calls: int, seed: int) -> RepeatsResult:
    rng = random.Random(seed)
    pairs = [(f"user-{u}", f"thread-{t}") for u in range(users) for t in range(THREADS)]
    with (
        ContextLedger.open(url, max_contexts_per_user=THREADS) as ledger,
        ContextLedger.open(url, max_contexts_per_user=THREADS) as other,
    ):
        for user, thread in pairs:
            ledger.open_context(user, thread, run_id="run-0")
        for user, _ in pairs[::THREADS]:
            other.active_contexts(user)  # warm: its cache holds every user
        given: list[tuple[str, str, str, int]] = []
        fresh: list[int] = []
        repeat: list[int] = []
        elsewhere: list[int] = []
        for n in range(calls):
            user, thread = rng.choice(pairs)
            call = partial(_open, ledger, user, thread, f"request-{n}", n)
            fresh += timed(iter([call]))
            given.append((user, thread, f"request-{n}", n))
            again = rng.choice(given[-RECENT:])
            repeat += timed(iter([partial(_open, ledger, *again)]))
            again = rng.choice(given[-RECENT:])
            elsewhere += timed(iter([partial(_open, other, *again)]))
    first, second, third = Latency.of(fresh), Latency.of(repeat), Latency.of(elsewhere)
    return RepeatsResult(
        "",
        first,
        second,
        third,
        round(second.p50_ms / first.p50_ms, 2),
        round(second.p99_ms / first.p99_ms, 2),
        round(third.p50_ms / first.p50_ms, 2),
    )


def _open(ledger: ContextLedger, user: str, thread: str, request: str, n: int) -> None:
    ledger.open_context(
        user,
        thread,
        run_id=f"run-{n + 1}",
        metadata={"last_message": f"message {n}"},
        request_id=request,
    )


def run_backend(
    backend: str, users: int, calls: int, seed: int, dsn: str
) -> RepeatsResult:
    with tempfile.TemporaryDirectory() as folder, postgres_schema(dsn, backend) as s:
        url = f"sqlite:///{Path(folder) / 'ledger.db'}"
        if backend == "postgres":
            url = f"{dsn}?schema={s}"
        result = measure(url, users, calls, seed)
    result.backend = backend
    result.targets = {
        f"repeat p50 <= {TARGET}x fresh": result.repeat_p50_over_fresh <= TARGET,
        f"repeat p99 <= {TARGET}x fresh": result.repeat_p99_over_fresh <= TARGET,
    }
    return result


def render(results: list[RepeatsResult], console: Console) -> None:
    table = Table(
        "figure (p50 / p99 ms)",
        *(r.backend for r in results),
        title="open_context: repeated request ids beside fresh writes",
    )
    for label, name in (
        ("fresh reuse, new request id", "fresh"),
        ("repeat, same ledger", "repeat"),
        ("repeat, another ledger (process)", "repeat_elsewhere"),
    ):
        figures: list[Latency] = [getattr(r, name) for r in results]
        table.add_row(label, *(f"{f.p50_ms:.3f} / {f.p99_ms:.3f}" for f in figures))
    table.add_row(
        "repeat / fresh, p50 / p99",
        *(
            f"{r.repeat_p50_over_fresh:.2f}x / {r.repeat_p99_over_fresh:.2f}x"
            for r in results
        ),
    )
    table.add_row(
        "another ledger's repeat / fresh, p50",
        *(f"{r.elsewhere_p50_over_fresh:.2f}x" for r in results),
    )
    for target in results[0].targets:
        table.add_row(
            target, *("met" if r.targets[target] else "NOT MET" for r in results)
        )
    console.print(table)


@click.command()
@click.option(
    "--backend", type=click.Choice(["sqlite", "postgres", "all"]), default="all"
)
@click.option("--calls", default=3000, show_default=True, type=click.IntRange(1))
@click.option("--users", default=200, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=1, show_default=True)
@click.option("--postgres", "dsn", default=POSTGRES_DSN, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path))
def main(
    *,
    backend: str,
    calls: int,
    users: int,
    seed: int,
    dsn: str,
    json_path: Path | None,
) -> None:
    """Measure repeats of request ids beside fresh writes and print the ratios."""
    console = Console()
    backends = ["sqlite", "postgres"] if backend == "all" else [backend]
    results = []
    for name in backends:
        console.print(f"{name}: {users} users x {THREADS} threads, {calls} calls")
        results.append(run_backend(name, users, calls, seed, dsn))
    render(results, console)
    if json_path:
        json_path.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
