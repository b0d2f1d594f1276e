"""The users' data keys of a sharded ledger, as the views use them.

A user's keys live on the user's shard (on two while a move copies them), so a
key is taken from the first shard, in order, that holds it: the shard whose log a
batch came from first, then the others. A shard that cannot be reached fails a
lookup only when no shard asked before it holds the key.
"""

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any, Protocol, TypeVar

from ledger.errors import LedgerError, StorageUnavailable
from ledger.log_source import LogSource, SourceKeys, Storage, storage_failures

T = TypeVar("T")


class Shards(Protocol):
    """What the keys need of ``projections._shard_set.ShardSet``."""

    def ids(self) -> list[int]: ...
    def source(self, shard: int) -> LogSource: ...
    def failures(self, shard: int) -> AbstractContextManager[None]: ...
    def opened(self) -> list[tuple[int, SourceKeys, Storage]]: ...
    def unreachable(self, shard: int) -> None: ...
    def down(self, shard: int) -> bool: ...


class ShardKeys:
    """``projections._store.Keys`` over every shard of a ledger."""

    def __init__(self, shards: Shards, prefer: int | None) -> None:
        self._shards = shards
        self._prefer = prefer

    def _opened(self) -> list[tuple[int, SourceKeys, Storage]]:
        return self._shards.opened()

    def _order(self) -> list[int]:
        """The preferred shard first, shards that failed lately last."""
        order = self._shards.ids()
        if self._prefer is not None:
            order = [self._prefer, *(s for s in order if s != self._prefer)]
        return sorted(order, key=self._shards.down)  # a stable sort

    @contextmanager
    def reading(self, cursor: Any = None) -> Iterator[None]:
        """A scope on every opened shard; ``cursor`` (a transaction of the views'
        database, shard 0's) serves shard 0's lookups."""
        with ExitStack() as stack:
            for shard, keys, _ in self._opened():
                stack.enter_context(keys.reading(cursor if shard == 0 else None))
            yield

    def prefetch(self, wanted: Iterable[tuple[str, int]]) -> None:
        """Looks the keys up at once on the preferred shard (on every opened
        shard when none is preferred)."""
        pairs = list(wanted)
        for shard, keys, storage in self._opened():
            if self._prefer in (None, shard) and not _prefetch(keys, storage, pairs):
                self._shards.unreachable(shard)

    def seal_cell(self, user_id: str, generation: int, plain: bytes) -> bytes | None:
        return self._first(lambda keys: keys.seal_cell(user_id, generation, plain))

    def open_cell(self, user_id: str, generation: int, sealed: bytes) -> bytes | None:
        return self._first(lambda keys: keys.open_cell(user_id, generation, sealed))

    def open_event_value(
        self, user_id: str, generation: int, sealed: bytes
    ) -> tuple[Any, Any] | None:
        return self._first(
            lambda keys: keys.open_event_value(user_id, generation, sealed)
        )

    def _first(self, call: Callable[[SourceKeys], T]) -> T:
        """``call`` on the first shard that has the key: a ValueError (no key
        there, or a value that does not open) asks the next one; if none has
        it, the first unreachable shard's failure, else the first ValueError."""
        missing: ValueError | None = None
        unreachable: StorageUnavailable | None = None
        for shard in self._order():
            try:
                with self._shards.failures(shard):
                    return call(self._shards.source(shard).keys)
            except StorageUnavailable as failure:
                self._shards.unreachable(shard)
                unreachable = unreachable or failure
            except LedgerError:
                raise  # a master key that does not open the keys: a setting
            except ValueError as error:
                missing = missing or error
        if unreachable is not None:
            raise unreachable
        if missing is not None:
            raise missing
        msg = "the ledger lists no shard to look keys up on"
        raise ValueError(msg)


def _prefetch(keys: SourceKeys, storage: Storage, pairs: list[tuple[str, int]]) -> bool:
    """Prefetches on one shard; False if it cannot be reached. Such a shard is
    passed over here: its keys are looked up again, and the failure raised, only
    when no other shard has them."""
    try:
        with storage_failures(storage):
            keys.prefetch(pairs)
    except StorageUnavailable:
        return False
    return True
