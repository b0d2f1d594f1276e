"""Runs one workload in N processes started together, and times them as a whole.

Each process builds its own connections and does its untimed warm-up, then all
wait at a barrier and time their calls. Throughput is all calls over the window
from the first process's start to the last one's end: perf_counter is
CLOCK_MONOTONIC on Linux, one clock for every process of the machine.
"""

import multiprocessing
import queue
import threading
import time
import traceback
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from typing import Protocol

from tools.bench.api import Latency, timed

BARRIER_TIMEOUT_SECONDS = 300.0  # the slowest warm-up, or a process that died
STOPPED = "stopped at the barrier: another writer failed or took too long"


class Step(Protocol):
    def __call__(self, n: int, /) -> object: ...


class Workload(Protocol):
    """What each process runs: its connections and warm-up, then one call per n."""

    def steps(self, worker: int, calls: int) -> AbstractContextManager[Step]: ...


@dataclass(frozen=True)
class Throughput:
    processes: int
    calls: int
    seconds: float
    ops_per_s: float
    latency: Latency
    cpu_ms_per_call: float  # the writer processes' own CPU, not the server's


@dataclass(frozen=True)
class _Timed:
    start_ns: int
    end_ns: int
    cpu_ns: int
    samples_ns: list[int]


class WriterFailed(RuntimeError):
    """A writer process raised; carries its traceback."""


def run_processes(workload: Workload, processes: int, calls: int) -> Throughput:
    """Times ``calls`` calls in each of ``processes`` processes started together."""
    # Fresh processes (no inherited connections) forked from a server that has
    # imported the first workload's module once (the server lives for the run).
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([type(workload).__module__])
    barrier = context.Barrier(processes)
    results: Queue[_Timed | str] = context.Queue()
    workers = [
        context.Process(target=_work, args=(workload, w, calls, barrier, results))
        for w in range(processes)
    ]
    for worker in workers:
        worker.start()
    try:
        outcomes = _collect(results, workers)
    finally:
        for worker in workers:
            worker.join()
    failures = [outcome for outcome in outcomes if isinstance(outcome, str)]
    if failures:
        # The first writer that failed, else one the barrier stopped.
        cause = min(failures, key=lambda failure: failure == STOPPED)
        raise WriterFailed(f"a writer process failed:\n{cause}")
    return _throughput([o for o in outcomes if isinstance(o, _Timed)], calls)


def _work(
    workload: Workload,
    worker: int,
    calls: int,
    barrier: Barrier,
    results: "Queue[_Timed | str]",
) -> None:
    try:
        with workload.steps(worker, calls) as step:
            barrier.wait(BARRIER_TIMEOUT_SECONDS)
            start, cpu = time.perf_counter_ns(), time.process_time_ns()
            samples = timed(partial(step, n) for n in range(calls))
            end, cpu = time.perf_counter_ns(), time.process_time_ns() - cpu
        results.put(_Timed(start, end, cpu, samples))
    except threading.BrokenBarrierError:
        results.put(STOPPED)
    except BaseException:
        barrier.abort()  # the others stop waiting and report too
        results.put(traceback.format_exc())
        raise


def _collect(
    results: "Queue[_Timed | str]", workers: Sequence[BaseProcess]
) -> list[_Timed | str]:
    outcomes: list[_Timed | str] = []
    while len(outcomes) < len(workers):
        try:
            outcomes.append(results.get(timeout=1.0))
        except queue.Empty:
            if not any(worker.is_alive() for worker in workers):
                outcomes.append("a writer process ended without a result")
    return outcomes


def _throughput(timings: list[_Timed], calls: int) -> Throughput:
    window_ns = max(t.end_ns for t in timings) - min(t.start_ns for t in timings)
    total = calls * len(timings)
    return Throughput(
        processes=len(timings),
        calls=total,
        seconds=round(window_ns / 1e9, 3),
        ops_per_s=round(total / (window_ns / 1e9), 1),
        latency=Latency.of([s for t in timings for s in t.samples_ns]),
        cpu_ms_per_call=round(sum(t.cpu_ns for t in timings) / total / 1e6, 3),
    )
