"""A user's state folded from the records verification reads, to prove each
snapshot: a snapshot is an optimisation, never evidence, so it must equal the fold
of the events up to its version.

The fold follows ``UserContexts.apply`` rule for rule, on the read side's plain
records: each context by ``evolve_fields`` (the one transition of a context), the
request window by ``remember_request``, and a ``forgotten`` event clears the
contexts and retires the key generation. Contexts stay dicts, so folding costs a
few microseconds an event.
"""

from collections import OrderedDict
from datetime import datetime
from typing import Any

from ledger._domain.contexts import remember_request
from ledger._domain.snapshot import UserSnapshot
from ledger._domain.streams import check_generation, check_same_thread
from ledger._domain.transitions import ContextFields, evolve_fields
from ledger._store.records import EventRecord


class Fold:
    """One user's state after the events folded so far."""

    __slots__ = (
        "contexts",
        "created_on",
        "forgotten_at",
        "key_generation",
        "last_hash",
        "modified_on",
        "requests",
        "user_id",
        "version",
    )

    def __init__(self) -> None:
        self.contexts: dict[str, ContextFields] = {}
        self.requests: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self.key_generation = 0
        self.forgotten_at = 0
        self.version = 0
        self.user_id = ""
        self.last_hash = ""
        self.created_on: datetime | None = None
        self.modified_on: datetime | None = None

    def apply(self, record: EventRecord, hashed: str) -> None:
        """Folds the next event (``hashed``: its chain hash); ValueError where
        ``UserContexts.apply`` refuses it."""
        kind = record.KIND
        check_generation(
            kind,
            sealing=record.details.get("metadata_commitment") is not None,
            named=record.key_generation,
            stream=self.key_generation,
            where=f"event version {record.version} of user {record.user_id!r}",
        )
        if kind == "forgotten":
            self.contexts.clear()
            self.key_generation = record.key_generation + 1
            self.forgotten_at = record.version
        else:
            self._evolve(record)
        request_id = record.details.get("request_id")
        if request_id is not None:
            remember_request(self.requests, request_id, record.version)
        if self.created_on is None:
            self.created_on, self.user_id = record.timestamp, record.user_id
        self.version, self.modified_on = record.version, record.timestamp
        self.last_hash = hashed

    def copy(self) -> "Fold":
        """An independent fold: a context's fields are replaced on change, never
        changed in place, so copying the maps is enough."""
        copy = Fold()
        for name in self.__slots__:
            setattr(copy, name, getattr(self, name))
        copy.contexts = dict(self.contexts)
        copy.requests = OrderedDict(self.requests)
        return copy

    def _evolve(self, record: EventRecord) -> None:
        current = self.contexts.get(record.context_id)
        if current is not None:
            check_same_thread(
                current["thread_id"],
                record.thread_id,
                record.version,
                record.context_id,
            )
        fields = evolve_fields(current, record)
        if fields is None:
            del self.contexts[record.context_id]
        else:
            self.contexts[record.context_id] = fields

    def differs_from(self, snapshot: UserSnapshot) -> str | None:
        """What of ``snapshot`` (taken at this fold's version) differs from the
        fold, or None when it holds exactly the folded state. ``created_on`` is
        not compared: the aggregate takes it from the clock when it starts a new
        user, and nothing decides on it."""
        mine: dict[str, Any] = {
            "user_id": self.user_id,
            "timestamp": self.modified_on,
            "modified_on": self.modified_on,
            "last_hash": self.last_hash,
            "contexts": self.contexts,
            "requests": [(rid, *versions) for rid, versions in self.requests.items()],
            "key_generation": self.key_generation,
            "forgotten_at": self.forgotten_at,
        }
        stored: dict[str, Any] = {
            "user_id": snapshot.user_id,
            "timestamp": snapshot.timestamp,
            "modified_on": snapshot.modified_on,
            "last_hash": snapshot.last_hash,
            "contexts": {c.context_id: dict(c.__dict__) for c in snapshot.contexts},
            "requests": [tuple(request) for request in snapshot.requests],
            "key_generation": snapshot.key_generation,
            "forgotten_at": snapshot.forgotten_at,
        }
        differing = [name for name in mine if mine[name] != stored[name]]
        return ", ".join(differing) if differing else None
