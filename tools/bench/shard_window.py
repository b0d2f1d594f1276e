"""Each server's CPU over a run's timed window, not over its warm-up.

The writer processes mark, in files, the start of their first timed call and the
end of their last; a thread of the benchmark's process reads each server's CPU
when the first start appears and when every process has marked its end.
"""

import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from tools.bench.clusters import Server, cpu_seconds
from tools.bench.processes import Step, Workload

POLL_SECONDS = 0.005


@dataclass(frozen=True)
class Marked:
    """A workload whose processes mark their timed window's ends in ``folder``."""

    workload: Workload
    folder: Path

    @contextmanager
    def steps(self, worker: int, calls: int) -> Iterator[Step]:
        with self.workload.steps(worker, calls) as step:

            def marked(n: int) -> object:
                if n == 0:
                    (self.folder / f"{worker}.start").touch()
                result = step(n)
                if n == calls - 1:
                    (self.folder / f"{worker}.end").touch()
                return result

            yield marked


class CpuWindow:
    """The servers' CPU from the first timed call of any process to the last
    timed call of every process."""

    def __init__(self, servers: list[Server], processes: int) -> None:
        self.servers = servers
        self.processes = processes
        self.folder = Path(tempfile.mkdtemp(prefix="ctxlbench-window-"))
        self._start: list[float] | None = None
        self._end: list[float] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def marked(self, workload: Workload) -> Marked:
        return Marked(workload, self.folder)

    def used(self) -> list[float | None]:
        """Each server's CPU seconds in the window (None: not measured)."""
        if self._start is None or self._end is None:
            return [None] * len(self.servers)
        return [
            None if server.postmaster is None else round(end - start, 3)
            for server, start, end in zip(
                self.servers, self._start, self._end, strict=True
            )
        ]

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _watch(self) -> None:
        if not self._until(lambda: any(self.folder.glob("*.start"))):
            return
        self._start = self._sample()
        if self._until(lambda: len(list(self.folder.glob("*.end"))) >= self.processes):
            self._end = self._sample()

    def _until(self, seen: Callable[[], bool]) -> bool:
        while not seen():
            if self._stop.wait(POLL_SECONDS):
                return False
        return True

    def _sample(self) -> list[float]:
        return [
            0.0 if server.postmaster is None else cpu_seconds(server.postmaster)
            for server in self.servers
        ]
