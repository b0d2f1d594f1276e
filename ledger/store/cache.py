"""The latest known state of recently used users, shared by a ledger's threads.

The library's repository cache fast-forwards the shared cached aggregate in place
and copies it for the caller after releasing its lock, so a concurrent reader can
copy a half-updated aggregate. Entries here are never changed in place: readers
copy an entry before changing it, and a newer state replaces the entry whole.
"""

import threading
from collections import OrderedDict
from uuid import UUID

from ledger.domain.contexts import UserContexts


class AggregateCache:
    """Least recently used users' aggregates, by aggregate id."""

    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize
        self._entries: OrderedDict[UUID, UserContexts] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, aggregate_id: UUID) -> UserContexts | None:
        """The cached aggregate; callers must not change it (copy it first)."""
        with self._lock:
            entry = self._entries.get(aggregate_id)
            if entry is not None:
                self._entries.move_to_end(aggregate_id)
            return entry

    def offer(self, aggregate: UserContexts) -> None:
        """Keeps ``aggregate`` if it is newer than the entry; the caller gives it up."""
        with self._lock:
            current = self._entries.get(aggregate.id)
            if current is not None and current.version >= aggregate.version:
                return
            self._entries[aggregate.id] = aggregate
            self._entries.move_to_end(aggregate.id)
            if len(self._entries) > self._maxsize:
                self._entries.popitem(last=False)

    def drop(self, aggregate_id: UUID) -> None:
        """Forgets the user's entry (after an erasure: it holds personal data)."""
        with self._lock:
            self._entries.pop(aggregate_id, None)
