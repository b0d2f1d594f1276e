"""What the ledger's spans cost: ``open_context`` reusing a thread's context on a
SQLite file, without OpenTelemetry, with the API alone (its no-op tracer), and
with the SDK recording every span (a provider without processors), each in a
process of its own; and the span wrapper alone around a function that does
nothing.

    python -m tools.bench.tracing [--calls N] [--rounds R] [--processes P]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("absent", "api", "sdk")

_CHILD = """
import json, statistics, sys, time
mode, path, calls, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
if mode == "absent":
    sys.modules["opentelemetry"] = None  # import fails: as if not installed
elif mode == "sdk":
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    trace.set_tracer_provider(TracerProvider())
from ledger import ContextLedger
from ledger import _tracing

def per_call(run):
    rounds_us = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            run()
        rounds_us.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(rounds_us)

@_tracing.traced("nothing")
def nothing(ledger):
    return None

ledger = ContextLedger.open("sqlite:///" + path)
ledger.open_context("bench-user", "bench-thread")
result = {
    "open_context_us": per_call(
        lambda: ledger.open_context("bench-user", "bench-thread")
    ),
    "wrapper_us": per_call(lambda: nothing(ledger)),
}
ledger.close()
print(json.dumps(result))
"""


def measure(mode: str, calls: int, rounds: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "bench.db")
        done = subprocess.run(  # noqa: S603 - our own interpreter and script
            [sys.executable, "-c", _CHILD, mode, path, str(calls), str(rounds)],
            check=True,
            capture_output=True,
            text=True,
        )
    figures: dict[str, float] = json.loads(done.stdout)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--processes", type=int, default=3)
    options = parser.parse_args()
    started = time.perf_counter()
    # The modes' processes take turns, and each figure is the least of its
    # processes': other work on the machine only ever adds time.
    runs = [
        {mode: measure(mode, options.calls, options.rounds) for mode in MODES}
        for _ in range(options.processes)
    ]
    figures = {
        mode: {key: min(run[mode][key] for run in runs) for key in runs[0][mode]}
        for mode in MODES
    }
    base = figures["absent"]["open_context_us"]
    print("mode     open_context reuse (us)  vs absent  span wrapper alone (us)")
    for mode in MODES:
        call = figures[mode]["open_context_us"]
        wrapper = figures[mode]["wrapper_us"]
        print(f"{mode:8} {call:24.1f} {call - base:+10.1f} {wrapper:24.2f}")
    print(
        f"(each the least, over {options.processes} processes, of the median of "
        f"{options.rounds} rounds of {options.calls} calls; "
        f"{time.perf_counter() - started:.0f} s)"
    )


if __name__ == "__main__":
    main()
