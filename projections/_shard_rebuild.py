"""Rebuilding the views of a sharded ledger: a process per shard, one swap.

The new tables are made beside the live ones (``ctxl_<table>__rebuild``), with
one tracking position per shard. Each shard's log is then read into them by a
process of its own, all at once. When every shard's part has caught up, the
events stored since are applied and the tables renamed into place in one
transaction that holds the live views' and the rebuild's locks of every shard:
readers see the old views until then, and no live worker writes in between. A
part that fails leaves the live views as they were.
"""

import multiprocessing
import pickle
import queue
from collections import Counter
from collections.abc import Mapping, Sequence
from multiprocessing.process import BaseProcess
from multiprocessing.queues import Queue
from typing import Any

from ledger.errors import LedgerError, StorageUnavailable
from projections import _moved_reads as moved_reads
from projections._active import ActiveContextsView
from projections._applying import OnBatch, Target, Unappliable
from projections._audit import AuditView
from projections._continuity import ContinuityView
from projections._errors import RebuildPartFailed, ViewCannotApply
from projections._shard_work import ShardWorkers, of_shard
from projections._view import (
    Generation,
    View,
    create_tables,
    index_loaded_tables,
    swap_in_rebuild,
)

VIEWS: dict[str, type[View]] = {
    view.name: view for view in (ActiveContextsView, AuditView, ContinuityView)
}
POLL_SECONDS = 0.5
"""How often the parent looks for a part's process that ended without a word."""
Report = tuple[str, int, Any, Any]
"""("batch", shard, positions advanced, None) or ("done", shard, counts, error)."""


def rebuild_over_shards(
    work: ShardWorkers, views: Sequence[View], on_batch: OnBatch | None = None
) -> Counter[str]:
    """Rebuilds ``views`` from every shard's log and swaps them in; how many
    events each applied. A view that cannot apply an event keeps its live
    tables (ViewCannotApply is raised after the others are swapped in)."""
    targets = [Target(view, Generation(view.name, rebuild=True)) for view in views]
    shards = work.shards.ids()
    for target in targets:
        _fresh_tables(work, target, shards)
    applied, failures = _in_processes(work, shards, [v.name for v in views], on_batch)
    stopped = {f.view for f in failures if isinstance(f, ViewCannotApply)}
    if len(stopped) < len(failures):  # a part failed for another reason
        raise _first(failures)
    applied += _swap(work, [t for t in targets if t.view.name not in stopped], shards)
    if failures:
        raise _first(failures)
    return applied


def _fresh_tables(work: ShardWorkers, target: Target, shards: list[int]) -> None:
    keys = [target.generation.of_shard(shard).key for shard in shards]
    with work.shards.failures(0), work.store.writing(*keys) as tx:
        create_tables(tx, target.view, target.generation, loading=True)
        for key in keys:
            work.store.forget(tx, key)
        moved_reads.forget(tx, keys)


def _in_processes(
    work: ShardWorkers,
    shards: list[int],
    names: list[str],
    on_batch: OnBatch | None,
) -> tuple[Counter[str], list[LedgerError]]:
    """Runs each shard's part in a process of its own; what they applied, and
    the parts' failures."""
    context = multiprocessing.get_context("spawn")
    reports: Queue[Report] = context.Queue()
    processes = {
        shard: context.Process(
            target=rebuild_part,
            args=(reports, work.shards.urls(), shard, names, work.batch_size),
            kwargs={"master_key": work.shards.master_key},
            name=f"ctxledger-rebuild-shard-{shard}",
            daemon=True,
        )
        for shard in shards
    }
    try:
        for process in processes.values():
            process.start()
        return _collect(reports, processes, on_batch)
    finally:
        for process in processes.values():
            if process.is_alive():  # the parent was interrupted: the parts stop
                process.terminate()
            process.join()


def _collect(
    reports: "Queue[Report]",
    processes: Mapping[int, BaseProcess],
    on_batch: OnBatch | None,
) -> tuple[Counter[str], list[LedgerError]]:
    applied: Counter[str] = Counter()
    failures: list[LedgerError] = []
    waiting = set(processes)
    while waiting:
        try:
            kind, shard, value, error = reports.get(timeout=POLL_SECONDS)
        except queue.Empty:
            for shard in [s for s in waiting if processes[s].exitcode is not None]:
                waiting.discard(shard)
                failures.append(RebuildPartFailed(shard, processes[shard].exitcode))
            continue
        if kind == "batch":
            if on_batch is not None:
                on_batch(value)
            continue
        waiting.discard(shard)
        applied.update(value)
        if error is not None:
            failures.append(error)
    return applied, failures


def rebuild_part(
    reports: "Queue[Report]",
    urls: dict[int, str],
    shard: int,
    names: list[str],
    batch_size: int,
    *,
    master_key: bytes | str | None,
) -> None:
    """One shard's part of a rebuild, in a process of its own."""
    counts: Counter[str] = Counter()
    try:
        work = ShardWorkers.open(urls, batch_size, master_key)
        try:
            targets = [Target(VIEWS[n](), Generation(n, rebuild=True)) for n in names]
            counts = work.advance(
                shard, targets, lambda n: reports.put(("batch", shard, n, None))
            )[0]
        finally:
            work.close()
    except Exception as error:  # noqa: BLE001  (reported to the parent, which raises it)
        reports.put(("done", shard, dict(counts), _portable(shard, error)))
        return
    reports.put(("done", shard, dict(counts), None))


def _portable(shard: int, error: Exception) -> LedgerError:
    """The error as it can cross to the parent process."""
    if isinstance(error, LedgerError):
        try:
            pickle.loads(pickle.dumps(error))  # noqa: S301  (our own error, this run)
        except Exception:  # noqa: BLE001  (one that does not cross is described)
            if isinstance(error, StorageUnavailable):
                return StorageUnavailable(error.where, RuntimeError(str(error.cause)))
        else:
            return error
    return RebuildPartFailed(shard, None, f"{type(error).__name__}: {error}")


def _swap(work: ShardWorkers, targets: list[Target], shards: list[int]) -> Counter[str]:
    """Applies every shard's last events and renames the tables into place, in
    one transaction holding every shard's live and rebuild locks."""
    if not targets:
        return Counter()
    for target in targets:
        keys = [target.generation.of_shard(shard).key for shard in shards]
        with work.shards.failures(0), work.store.writing(*keys) as tx:
            index_loaded_tables(tx, target.view, target.generation)
    # Read before the transaction: on PostgreSQL a head waits for older ones.
    heads = {shard: work.worker(shard).reader.head() for shard in shards}
    try:
        return _swap_at(work, targets, heads)
    except Unappliable:
        # The last events one per transaction: ViewCannotApply names the culprit;
        # if none fails alone, the swap is tried once more, with nothing to apply.
        for shard in shards:
            work.worker(shard).run(of_shard(targets, shard), heads[shard])
        return _swap_at(work, targets, heads)


def _swap_at(
    work: ShardWorkers, targets: list[Target], heads: dict[int, int]
) -> Counter[str]:
    live = [Target(t.view, Generation(t.view.name, rebuild=False)) for t in targets]
    keys = [
        t.generation.of_shard(shard).key for t in (*live, *targets) for shard in heads
    ]
    applied: Counter[str] = Counter()
    with work.shards.failures(0), work.store.writing(*keys) as tx:
        for target in targets:
            for shard, head in heads.items():
                tail = of_shard([target], shard)[0]
                applied[target.view.name] += work.worker(shard).apply_tail(
                    tx, tail, head
                )
            swap_in_rebuild(tx, target.view)
            for shard in heads:
                rebuilt = target.generation.of_shard(shard).key
                live_key = Generation(target.view.name, False, shard).key
                work.store.move_tracking(tx, rebuilt, live_key)
                moved_reads.move(tx, rebuilt, live_key)
    return applied


def _first(failures: list[LedgerError]) -> LedgerError:
    first = failures[0]
    for other in failures[1:]:
        first.add_note(str(other))
    return first
