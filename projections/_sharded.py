"""``ShardedProjections``: the views of a ledger whose users live on several shards.

``Projections.open(url)`` returns one when the PostgreSQL database at ``url``
holds a shard directory (``ledger._sharded``). The views' tables stay in that
database (shard 0) and every shard's log feeds them, each view keeping one
tracking position per shard (``projections._shard_work``); queries are unchanged.
What takes or gives a position takes or gives one per shard: ``heads()`` and
``wait()`` a mapping shard -> position, ``status()`` a row per view and shard.

A shard that cannot be reached stops only the work on its log: ``catch_up``
brings the other shards' parts up to date and then raises its failure, and
``follow`` goes on with the others, reports the failure and tries that shard
again (after a pause that doubles up to 30 s) until it catches up by itself.
"""

import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence

from ledger import _metrics as metrics
from ledger.errors import LedgerError, StorageUnavailable
from ledger.log_source import LogSource, Where
from projections import _moved_reads as moved_reads
from projections._api import (
    DEFAULT_POLL_SECONDS,
    VIEW_NAMES,
    OnFailure,
    Projections,
    by_shard,
    log_failure,
)
from projections._applying import OnBatch
from projections._errors import PositionsPerShard, ViewNotBuilt
from projections._models import ShardViewStatus, ViewStatus
from projections._shard_follow import ShardFollowers
from projections._shard_rebuild import rebuild_over_shards
from projections._shard_replay import ShardReplay
from projections._shard_set import ShardSet
from projections._shard_status import record_figures, shard_status
from projections._shard_work import ShardWorkers
from projections._store import ViewStore
from projections._view import Generation, View


def sharded_views(
    where: Where,
    urls: dict[int, str],
    source: LogSource,
    *,
    batch_size: int,
    create: bool,
    master_key: bytes | str | None,
) -> "ShardedProjections":
    """The views of the sharded ledger whose shard 0 is ``source``."""
    shards = ShardSet(where, urls, source, master_key)
    made = ShardedProjections._beside(source, batch_size, create, shards=shards)
    if not isinstance(made, ShardedProjections):  # _beside makes its own class
        raise TypeError(made)
    return made


class ShardedProjections(Projections):
    """The views of a sharded ledger (see the module's docstring)."""

    def __init__(
        self,
        source: LogSource,
        store: ViewStore,
        batch_size: int,
        built: Sequence[str] = VIEW_NAMES,
        *,
        shards: ShardSet,
    ) -> None:
        self._shards = shards
        self._work = ShardWorkers(shards, store, batch_size)
        super().__init__(source, self._work.store, batch_size, built)
        self._audit.by_time()

    def _set_up(self) -> None:
        with self._shards.failures(0), self._store.writing() as tx:
            moved_reads.create_table(tx)
        for view in self.views.values():
            self._processor.ensure_live(view, self._shards.ids(), moved_reads.forget)

    def _before_close(self) -> None:
        self._shards.close()

    # Processing.

    def catch_up(
        self, names: Sequence[str] | None = None, *, on_batch: OnBatch | None = None
    ) -> dict[str, int]:
        """Applies every event stored now on every shard; how many each view
        applied. A shard that fails does not stop the others: its failure is
        raised after them, with a note of what they did."""
        targets = self._live(names)
        self._shards.refresh(now=True)
        applied: Counter[str] = Counter()
        failures: list[tuple[int, LedgerError]] = []
        for shard in self._shards.ids():
            try:
                applied += self._work.advance(shard, targets, on_batch)[0]
            except LedgerError as error:
                failures.append((shard, error))
                if isinstance(error, StorageUnavailable):
                    self._shards.lost(shard)
        if metrics.enabled():
            self._record_figures()
        if failures:
            raise _noted(failures, len(self._shards.ids()))
        return {name: applied[name] for name in self._selected(names)}

    def follow(
        self,
        stop: threading.Event,
        names: Sequence[str] | None = None,
        *,
        poll_seconds: float = DEFAULT_POLL_SECONDS,
        on_batch: OnBatch | None = None,
        on_failure: OnFailure | None = None,
    ) -> dict[str, int]:
        """``Projections.follow`` with a thread per shard's log: a failure of one
        shard is reported (``on_failure``, from that shard's thread, as is
        ``on_batch``) and that shard alone is tried again after a pause, while
        the others go on. Returns each view's position on each shard as of its
        last batch, by ``view`` (shard 0) and ``view@shardN``."""
        followers = ShardFollowers(
            self._work,
            self._live(names),
            poll_seconds=poll_seconds,
            on_batch=on_batch,
            report=on_failure or log_failure,
        )
        return followers.run(stop, self._record_figures if metrics.enabled() else None)

    def _rebuilt(self, views: list[View], on_batch: OnBatch | None) -> Counter[str]:
        """Every shard's log read by a process of its own; one swap at the end."""
        self._shards.refresh(now=True)
        return rebuild_over_shards(self._work, views, on_batch)

    def wait(
        self, position: int | str | Mapping[int, int], timeout: float = 10.0
    ) -> None:
        """Blocks until every view has applied, on each shard, the position given
        for it: a mapping shard -> position (``heads()``) or a change feed's
        position text; TimeoutError if not within ``timeout``. A plain int is
        refused (PositionsPerShard): it does not say which shard."""
        if isinstance(position, int):
            raise PositionsPerShard("wait(position)")
        deadline = time.monotonic() + timeout
        for view in self.views.values():
            self._names(view)
            for shard, at in sorted(by_shard(position).items()):
                if at > 0:
                    key = Generation(view.name, rebuild=False, shard=shard).key
                    left = max(deadline - time.monotonic(), 0.0)
                    self._store.recorder.wait(key, at, timeout=left)

    # State of the processing.

    def head(self) -> int:
        """Refused: each shard has a head of its own (``heads()``)."""
        raise PositionsPerShard("head()")

    def heads(self) -> dict[int, int]:
        """Each shard's head position, by shard id (StorageUnavailable naming a
        shard that cannot be reached)."""
        return {shard: self._head_of(shard) for shard in self._shards.ids()}

    def status(self) -> list[ViewStatus]:
        """A row per view and shard (``ShardViewStatus``): the view's position on
        that shard's log, the shard's head and how many events are stored after
        the position. A shard that cannot be reached shows ``reachable=False``
        (its head and lag as last known to the view: its position and 0)."""
        return [*shard_status(self._shards, self._store, self.views, self._built)]

    def _record_figures(self) -> None:
        rows = [row for row in self.status() if isinstance(row, ShardViewStatus)]
        record_figures(rows, self._shards.ids())

    def _head_of(self, shard: int) -> int:
        with self._shards.failures(shard):
            return self._shards.source(shard).head()

    # Checking.

    def verify(self, names: Sequence[str] | None = None) -> dict[str, list[str]]:
        """Compares each view with a replay of every shard's log up to the view's
        positions (each event once, as the views take it); the differences per
        view. A view behind a shard's head is not equal to the ledger: its
        first difference says how far behind."""
        heads = self.heads()
        found: dict[str, list[str]] = {}
        for name in self._selected(names):
            view = self.views[name]
            if name not in self._built:
                found[name] = [str(ViewNotBuilt(name, self._missing.get(name, ())))]
                continue
            with self._store.reading() as tx:
                positions = {
                    shard: self._store.position(tx, Generation(name, False, shard).key)
                    for shard in heads
                }
                replay = ShardReplay(self._shards, positions, self._work.batch_size)
                events = (
                    replay.by_position()
                    if view.replay_by_position
                    else replay.in_log_order()
                )
                rows = view.differences(tx, self._names(view), events)
            found[name] = [*self._behind_shards(positions, heads), *rows]
        return found

    def _behind_shards(
        self, positions: dict[int, int], heads: dict[int, int]
    ) -> list[str]:
        found = []
        for shard, head in heads.items():
            if positions[shard] < head:
                with self._shards.failures(shard):
                    lag = self._shards.source(shard).count_after(positions[shard])
                found.append(
                    f"shard {shard}: behind its log by {lag} event(s): at position "
                    f"{positions[shard]}, the head is {head}; run `ctxledger project`"
                )
        return found


def _noted(failures: list[tuple[int, LedgerError]], shards: int) -> LedgerError:
    first = failures[0][1]
    first.add_note(
        f"the views caught up on {shards - len(failures)} other shard(s); "
        f"shard(s) {', '.join(str(s) for s, _ in failures)} failed: run it again "
        "when they are back"
    )
    for _, other in failures[1:]:
        first.add_note(str(other))
    return first
