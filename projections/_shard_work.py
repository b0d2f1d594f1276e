"""The views' workers of a sharded ledger: one ``Processor`` per shard's log.

Every worker writes to the same tables, in shard 0's database, each under its own
tracking position (``Generation.of_shard``) and its own lock, so the shards'
logs are applied side by side; ``projections._moved`` keeps a moved stream's
events once. A failure to read a shard's log is StorageUnavailable naming that
shard's database; a failure of the views' database names shard 0's.
"""

import threading
from collections import Counter
from collections.abc import Sequence
from typing import Self

from ledger.log_source import (
    LogSource,
    Positioned,
    locate,
    storage_failures,
)
from projections._applying import OnBatch, Target
from projections._errors import ProjectionError
from projections._moved import MovedStreams
from projections._processing import Processor
from projections._reader import LogReader
from projections._shard_set import ShardSet
from projections._store import ViewStore


class ShardReader(LogReader):
    """A shard's log, its failures named after the shard's database."""

    def __init__(self, source: LogSource, shard: int, shards: ShardSet) -> None:
        super().__init__(source)
        self.shard = shard
        self._shards = shards

    def head(self) -> int:
        with self._shards.failures(self.shard):
            return super().head()

    def batch(
        self, after: int, limit: int, up_to: int | None = None
    ) -> list[Positioned]:
        with self._shards.failures(self.shard):
            return super().batch(after, limit, up_to)


class ShardWorkers:
    """A Processor per shard, made on first use (and again once its shard's
    source was opened anew after a failure)."""

    def __init__(self, shards: ShardSet, store: ViewStore, batch_size: int) -> None:
        self.shards = shards
        self.store = store.with_keys(shards.keys())
        """The views' database, the keys looked up on every shard."""
        self.batch_size = batch_size
        self._workers: dict[int, Processor] = {}
        self._lock = threading.Lock()

    @classmethod
    def open(
        cls,
        urls: dict[int, str],
        batch_size: int,
        master_key: bytes | str | None,
    ) -> Self:
        """The workers over the shards at ``urls`` (shard 0's holds the views),
        opened anew: in a rebuild's process of its own."""
        where = locate(urls[0])
        source = LogSource.open(where, create=False, master_key=master_key)
        try:
            with storage_failures(where.storage):
                store = ViewStore.beside(source, create=False)
        except BaseException:
            source.close()
            raise
        return cls(ShardSet(where, urls, source, master_key), store, batch_size)

    def close(self) -> None:
        """Closes every shard's source, shard 0's too."""
        self.shards.close()
        self.shards.source(0).close()

    def worker(self, shard: int) -> Processor:
        source = self.shards.source(shard)
        with self._lock:
            known = self._workers.get(shard)
            if known is not None and known.reader.source is source:
                return known
            store = self.store.with_keys(self.shards.keys(prefer=shard))
            made = Processor(
                store,
                ShardReader(source, shard, self.shards),
                self.batch_size,
                MovedStreams(shard, self.shards, store),
            )
            self._workers[shard] = made
            return made

    def advance(
        self,
        shard: int,
        targets: Sequence[Target],
        on_batch: OnBatch | None = None,
        stop: threading.Event | None = None,
    ) -> tuple[Counter[str], dict[str, int]]:
        """Brings the targets up to the shard's head (``Processor.advance``); an
        event that stops a view is named with its shard."""
        try:
            with self.shards.failures(0):  # the views' database
                worker = self.worker(shard)
                head = worker.reader.head()
                done = worker.advance(of_shard(targets, shard), head, on_batch, stop)
        except ProjectionError as error:
            where = self.shards.storage(shard).description
            error.add_note(f"the position is in the log of shard {shard} ({where})")
            raise
        with self.shards.failures(shard):  # the log's Merkle tree, for checkpoints
            self.shards.source(shard).extend_tree(head)
        return done


def of_shard(targets: Sequence[Target], shard: int) -> list[Target]:
    """The same views and tables, under ``shard``'s tracking positions."""
    return [Target(t.view, t.generation.of_shard(shard)) for t in targets]
