"""Checkpoint verification over shards: a moved user's events are not lost.

A move copies a user's events to the target shard and then deletes the
originals from the source, so the source's tree holds leaves whose events are
no longer in its log. Such a leaf is accounted for, not ``missing``, when the
source records the stream as moved away (``ctxledger_moved_out``) and the shard
it went to (or, after further moves, a shard it went on to) holds a leaf of the
same version with the same hash: a copy has its original's chain form, so its
leaf is the same. Anything else is reported as ``missing``.
"""

from typing import TYPE_CHECKING
from uuid import UUID

from ledger._audit.checkpoints import Departed
from ledger._store.shard_copies import moves_around
from ledger._store.tree_store import Leaf

if TYPE_CHECKING:
    from ledger._api import ContextLedger
    from ledger._sharded import ShardedLedger


def departed_from(ledger: "ShardedLedger", shard: int) -> Departed:
    """Whether a leaf of ``shard``'s tree stands for an event that moved on."""
    hops = len(ledger.shard_ids())
    where: dict[int, dict[UUID, int]] = {}

    def moved_on(leaf: Leaf, digest: bytes) -> bool:
        stream, at = UUID(leaf.stream), shard
        for _ in range(hops):
            if at not in where:
                where[at] = _departures(ledger.shard(at))
            target = where[at].get(stream)
            if target is None:
                return False
            if _holds(ledger.shard(target), leaf, digest):
                return True
            at = target
        return False

    return moved_on


def _departures(shard: "ContextLedger") -> dict[UUID, int]:
    datastore = shard._app.recorder.datastore  # type: ignore[attr-defined]
    schema = str(shard.storage.settings["POSTGRES_SCHEMA"])
    with datastore.transaction(commit=False) as cursor:
        return dict(moves_around(cursor, schema, 0, 0).departed)


def _holds(shard: "ContextLedger", leaf: Leaf, digest: bytes) -> bool:
    """Whether the shard's tree has a leaf of that event with that hash."""
    tree = shard._tree()
    tree.ensure_tables()
    size = tree.store.state().size
    there = [
        found.number
        for found in tree.store.leaves_of(leaf.stream, size)
        if found.version == leaf.version
    ]
    return digest in tree.leaf_hashes(there).values()
