"""``follow`` on a sharded ledger: a thread per shard's log.

Each shard's worker polls its log, applies new events and, when its shard (or the
views' database) fails, reports it and tries again after a pause that doubles up
to 30 s, on its own: a shard that is down, or slow to time out, holds up no other
shard's views. A data problem (UndecodableEvent, ViewCannotApply, LedgerCorrupted)
on any shard ends ``follow`` for all, and is raised in the caller's thread.
"""

import threading
import time
from collections.abc import Callable, Sequence

from ledger.errors import StorageUnavailable
from projections._api import (
    FIGURES_SECONDS,
    FIRST_RETRY_SECONDS,
    LONGEST_RETRY_SECONDS,
    OnFailure,
)
from projections._applying import OnBatch, Target
from projections._shard_work import ShardWorkers


class ShardFollowers:
    """The threads that follow every shard's log, until ``stop`` is set."""

    def __init__(
        self,
        work: ShardWorkers,
        targets: Sequence[Target],
        *,
        poll_seconds: float,
        on_batch: OnBatch | None,
        report: OnFailure,
    ) -> None:
        self.work, self.targets = work, targets
        self.poll_seconds, self.on_batch, self.report = poll_seconds, on_batch, report
        self.reached: dict[str, int] = {}
        """Each view's position on each shard: ``view`` (shard 0), ``view@shardN``."""
        self._halt = threading.Event()
        self._error: Exception | None = None
        self._threads: dict[int, threading.Thread] = {}
        self._lock = threading.Lock()

    def run(
        self, stop: threading.Event, figures: Callable[[], None] | None
    ) -> dict[str, int]:
        """Follows until ``stop`` is set (or a shard meets a data problem, raised
        here); ``figures`` sets the metrics every FIGURES_SECONDS."""
        figures_due = 0.0
        try:
            while not (stop.is_set() or self._halt.is_set()):
                self._start_new_shards()
                if figures is not None and time.monotonic() >= figures_due:
                    self._guarded(figures)
                    figures_due = time.monotonic() + FIGURES_SECONDS
                stop.wait(self.poll_seconds)
        finally:
            self._halt.set()
            for thread in self._threads.values():
                thread.join()
        if self._error is not None:
            raise self._error
        with self._lock:
            return dict(self.reached)

    def _start_new_shards(self) -> None:
        """A thread for each shard without one (a shard added since included)."""
        if not self._guarded(self.work.shards.refresh):
            return
        for shard in self.work.shards.ids():
            if shard not in self._threads:
                thread = threading.Thread(
                    target=self._follow,
                    args=(shard,),
                    name=f"ctxledger-views-shard-{shard}",
                    daemon=True,
                )
                self._threads[shard] = thread
                thread.start()

    def _guarded(self, call: Callable[[], None]) -> bool:
        """``call``; a failure of the views' database (shard 0) is reported."""
        try:
            call()
        except StorageUnavailable as failure:
            self.report(failure, self.poll_seconds)
            return False
        return True

    def _follow(self, shard: int) -> None:
        pause = FIRST_RETRY_SECONDS
        while not self._halt.is_set():
            try:
                _, at = self.work.advance(
                    shard, self.targets, self.on_batch, self._halt
                )
            except StorageUnavailable as failure:
                self.report(failure, pause)
                self.work.shards.lost(shard)
                self._halt.wait(pause)
                pause = min(pause * 2, LONGEST_RETRY_SECONDS)
                continue
            except Exception as error:  # noqa: BLE001  (raised in the caller's thread)
                self._error = self._error or error
                self._halt.set()
                return
            pause = FIRST_RETRY_SECONDS
            suffix = f"@shard{shard}" if shard else ""
            with self._lock:
                self.reached.update({f"{n}{suffix}": p for n, p in at.items()})
            self._halt.wait(self.poll_seconds)
