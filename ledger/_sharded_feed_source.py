"""What the change feeds of one sharded ledger share in a process.

A link per shard (``ShardLink``: its ledger, whose ``FeedHub`` reads its log once
for all feeds, and the moves around it), the stamps that order the links' reads,
and the list of shards: while a feed is open, a thread of the source reads the
directory's list every LIST_SECONDS and wakes the feeds when a shard was added,
so they read it from its start.
"""

import itertools
import threading
from typing import TYPE_CHECKING, Protocol

from ledger._sharded_feed_links import ShardLink
from ledger.errors import LedgerError

if TYPE_CHECKING:
    from ledger._sharded import ShardedLedger

LIST_SECONDS = 5.0
"""How often the shard list is read again while a feed is open."""


class Woken(Protocol):
    def wake(self) -> None: ...


class FeedSource:
    """The links, stamps and shard list of one sharded ledger's feeds."""

    def __init__(self, ledger: "ShardedLedger") -> None:
        self.ledger = ledger
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stamps = itertools.count(1)
        self._stamp_lock = threading.Lock()
        self._ids = ledger.shard_ids()
        self.version = 0
        """Counts changes of the shard list."""
        self._links: dict[int, ShardLink] = {}
        self._feeds: set[Woken] = set()
        self._thread: threading.Thread | None = None

    @property
    def closed(self) -> bool:
        return self.ledger.calls.closed

    def stamp(self) -> int:
        """A number greater than every stamp taken before."""
        with self._stamp_lock:
            return next(self._stamps)

    def shard_ids(self) -> list[int]:
        with self._lock:
            return list(self._ids)

    def link(self, shard_id: int) -> ShardLink:
        with self._lock:
            link = self._links.get(shard_id)
            if link is None:
                ledger = self.ledger
                link = ShardLink(shard_id, lambda: ledger.shard(shard_id), self.stamp)
                self._links[shard_id] = link
            return link

    def join(self, feed: Woken) -> None:
        with self._lock:
            self._feeds.add(feed)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="ctxledger-shard-list", daemon=True
                )
                self._thread.start()

    def leave(self, feed: Woken) -> None:
        with self._lock:
            self._feeds.discard(feed)
            self._changed.notify_all()

    def _watch(self) -> None:
        while True:
            with self._lock:
                self._changed.wait_for(
                    lambda: not self._feeds or self.closed, LIST_SECONDS
                )
                if not self._feeds or self.closed:
                    self._thread = None
                    return
            self._read_list()

    def _read_list(self) -> None:
        try:
            ids = self.ledger.shard_ids()
        except LedgerError:
            return  # shard 0 is away: the list is read again later
        with self._lock:
            if ids == self._ids:
                return
            self._ids = ids
            self.version += 1
            feeds = list(self._feeds)
        for feed in feeds:
            feed.wake()


_SOURCES_LOCK = threading.Lock()


def source_of(ledger: "ShardedLedger") -> FeedSource:
    """The ledger's feed source (made by its first feed)."""
    with _SOURCES_LOCK:
        source: FeedSource | None = ledger.__dict__.get("_feed_source")
        if source is None:
            source = FeedSource(ledger)
            ledger.__dict__["_feed_source"] = source
        return source
