"""The shards of a sharded ledger as the views read them.

The views' tables and tracking positions live in shard 0's database (the ledger's
URL); every shard's log is read through a ``LogSource`` of its own, opened on first
use. A shard that cannot be reached fails only the work on its log: its source is
dropped and opened again on the next attempt, so it catches up by itself once it
is back.

A view keeps one position per event (audit rows, continuity overlaps). On a
sharded ledger positions repeat across shards, so the position a view keeps is
``shard * 2**48 + position`` (shard 0's events keep their own: a database that
becomes shard 0 keeps its views' rows), and an event a move copied keeps the
position it had on the shard it was copied from.
"""

import threading
import time
from contextlib import AbstractContextManager
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ledger.errors import StorageUnavailable
from ledger.log_source import (
    LogSource,
    SourceKeys,
    Storage,
    Where,
    locate,
    storage_failures,
)
from projections._shard_keys import ShardKeys

SHARD_BITS = 48
"""Bits of a view position that hold the shard's own position (2**48 events)."""
REFRESH_SECONDS = 5.0
"""How often a running worker reads the directory again for shards added since."""
DOWN_SECONDS = 5.0
"""How long a shard that failed is asked for keys only when no other has them."""


def view_position(shard: int, position: int) -> int:
    """The position a view keeps for the event at ``position`` of ``shard``'s log."""
    if not 0 <= position < 1 << SHARD_BITS:
        msg = f"position {position} of shard {shard} is beyond 2**{SHARD_BITS}"
        raise OverflowError(msg)
    return shard << SHARD_BITS | position


class ShardSet:
    """Every shard's log of one sharded ledger, opened on first use."""

    def __init__(
        self,
        where: Where,
        urls: dict[int, str],
        first: LogSource,
        master_key: bytes | str | None,
    ) -> None:
        self.where = where
        self._urls = dict(urls)
        self._storages = {0: where.storage}
        self._sources: dict[int, LogSource] = {0: first}
        self._master_key = master_key
        self._lock = threading.Lock()
        self._refreshed = time.monotonic()
        self._failed: dict[int, float] = {}

    def ids(self) -> list[int]:
        with self._lock:
            return sorted(self._urls)

    def urls(self) -> dict[int, str]:
        """Each shard's URL to connect with (a rebuild's processes open them)."""
        with self._lock:
            return dict(self._urls)

    @property
    def master_key(self) -> bytes | str | None:
        return self._master_key

    def refresh(self, *, now: bool = False) -> None:
        """Reads the directory again (at most every REFRESH_SECONDS unless
        ``now``), so a shard added since is read too."""
        if not now and time.monotonic() - self._refreshed < REFRESH_SECONDS:
            return
        with storage_failures(self.where.storage):
            urls = self._sources[0].shard_urls(self.where.url) or {0: self.where.url}
        with self._lock:
            self._urls.update(urls)
            self._refreshed = time.monotonic()

    def storage(self, shard: int) -> Storage:
        with self._lock:
            known = self._storages.get(shard)
        if known is None:
            known = locate(self._url(shard)).storage
            with self._lock:
                self._storages[shard] = known
        return known

    def failures(self, shard: int) -> AbstractContextManager[None]:
        """Within it, a failure of the shard's database is StorageUnavailable
        naming that database."""
        return storage_failures(self.storage(shard))

    def source(self, shard: int) -> LogSource:
        """The shard's log (opened now if need be: StorageUnavailable if it
        cannot be reached)."""
        with self._lock:
            opened = self._sources.get(shard)
        if opened is not None:
            return opened
        with self.failures(shard):
            opened = LogSource.open(
                locate(_one_kept(self._url(shard))),
                create=False,
                master_key=self._master_key,
            )
        with self._lock:
            known = self._sources.setdefault(shard, opened)
        if known is not opened:  # another thread opened it meanwhile
            opened.close()
        return known

    def unreachable(self, shard: int) -> None:
        """Notes a failure on ``shard`` (``down`` for DOWN_SECONDS)."""
        with self._lock:
            self._failed[shard] = time.monotonic()

    def down(self, shard: int) -> bool:
        """Whether ``shard`` failed in the last DOWN_SECONDS."""
        with self._lock:
            failed = self._failed.get(shard)
        return failed is not None and time.monotonic() - failed < DOWN_SECONDS

    def lost(self, shard: int) -> None:
        """After a failure on ``shard``: its broken connections are replaced (if
        it is still away, the next try finds it out), and its keys are asked
        last for a while (``down``)."""
        self.unreachable(shard)
        with self._lock:
            source = self._sources.get(shard)
        if source is not None:
            source.check_connections()

    def keys(self, prefer: int | None = None) -> ShardKeys:
        """The users' data keys over every shard, ``prefer`` asked first."""
        return ShardKeys(self, prefer)

    def close(self) -> None:
        """Closes every shard's source but shard 0's (the views' owner closes it)."""
        with self._lock:
            sources = [s for shard, s in self._sources.items() if shard != 0]
            self._sources = {0: self._sources[0]}
        for source in sources:
            source.close()

    def _url(self, shard: int) -> str:
        with self._lock:
            url = self._urls.get(shard)
        if url is None:
            raise StorageUnavailable(
                f"shard {shard}",
                LookupError(f"the shard directory lists no shard {shard}"),
            )
        return url

    def opened(self) -> list[tuple[int, SourceKeys, Storage]]:
        """The keys of the shards opened so far and not ``down``: (shard, keys,
        storage)."""
        with self._lock:
            opened = sorted(self._sources.items())
        return [
            (shard, s.keys, self.storage(shard))
            for shard, s in opened
            if not self.down(shard)
        ]


def _one_kept(url: str) -> str:
    """A shard's URL whose pool keeps one connection: the views read each shard
    one batch at a time (its pool opens more, up to ``max_overflow``, if asked)."""
    parts = urlsplit(url)
    query = [(n, v) for n, v in parse_qsl(parts.query) if n != "pool_size"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("pool_size", "1")])))
