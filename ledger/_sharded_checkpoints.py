"""Checkpoint verification over shards: a moved user's events are not lost.

A move copies a user's events to the target shard and then deletes the
originals from the source, so the source's tree holds leaves whose events are
no longer in its log. Such a leaf is accounted for, not ``missing``, when the
source records the stream as moved away (``ctxledger_moved_out``) and the shard
it went to (or, after further moves, a shard it went on to) holds a leaf of the
same version with the same hash: a copy has its original's chain form, so its
leaf is the same. Anything else is reported as ``missing``.
"""

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar
from uuid import UUID

from ledger import _tracing as tracing
from ledger._api import ContextLedger
from ledger._audit.checkpoint_files import KeyInput
from ledger._audit.checkpoints import (
    CheckpointReport,
    Departed,
    SignedCheckpoint,
    verify_tree,
)
from ledger._audit.log_tree import TreeHead
from ledger._audit.notes import Verifier, open_checkpoint, shard_of_origin
from ledger._store.shard_copies import moves_around
from ledger._store.shard_directory import ShardDirectory
from ledger._store.tree_store import Leaf
from ledger.errors import LedgerConfigError

T = TypeVar("T")


class ShardedCheckpoints(ContextLedger):
    """The checkpoint calls of ``ShardedLedger``: a Merkle tree per shard."""

    if TYPE_CHECKING:  # ShardedLedger's

        def shard(self, shard_id: int) -> ContextLedger: ...
        def shard_ids(self) -> list[int]: ...

        directory: ShardDirectory

        def _on_every_shard(
            self, name: str, call: Callable[[ContextLedger], T]
        ) -> list[T]: ...
        def _routed(
            self, user_id: str, call: Callable[[ContextLedger], T], *, write: bool
        ) -> T: ...

    @tracing.traced("catch_up_tree")
    def catch_up_tree(self) -> TreeHead:
        """Every shard's tree caught up; shard 0's head (``shard(i)`` has each)."""
        return self._on_every_shard("catch_up_tree", lambda s: s.catch_up_tree())[0]

    @tracing.traced("sign_checkpoint")
    def sign_checkpoint(self, key: KeyInput) -> SignedCheckpoint:
        raise LedgerConfigError(
            "a sharded ledger has a log per shard: sign_checkpoints signs each"
        )

    @tracing.traced("sign_checkpoints")
    def sign_checkpoints(self, key: KeyInput) -> list[SignedCheckpoint]:
        return self._on_every_shard("sign_checkpoint", lambda s: s.sign_checkpoint(key))

    @tracing.traced("prove_event")
    def prove_event(self, user_id: str, version: int) -> str:
        """``prove_event`` on the user's shard, in that shard's checkpoint."""
        return self._routed(
            user_id, lambda s: s.prove_event(user_id, version), write=False
        )

    @tracing.traced("latest_checkpoint")
    def latest_checkpoint(self) -> str | None:
        """Each shard's latest note, separated by a blank line (None: none)."""
        notes = self._on_every_shard(
            "latest_checkpoint", lambda s: s.latest_checkpoint()
        )
        return "\n".join(note for note in notes if note) or None

    def _verify_note(
        self, note: str, verifier: Verifier, public_key: KeyInput
    ) -> CheckpointReport:
        checkpoint = open_checkpoint(note, verifier)
        shard = shard_of_origin(checkpoint.origin, verifier.name)
        tree = self.shard(shard)._tree()
        return verify_tree(tree, checkpoint, departed_from(self, shard))


def departed_from(ledger: ShardedCheckpoints, shard: int) -> Departed:
    """Whether a leaf of ``shard``'s tree stands for an event that moved on: the
    moves recorded from ``shard`` lead, without a loop, to the shard the
    directory gives the user now, and that shard's tree holds the event with
    the same hash (after a move away and back, as another leaf of its own)."""
    where: dict[int, dict[UUID, int]] = {}
    caught_up: set[int] = set()

    def owner_reached(stream: UUID, owner: int) -> bool:
        at, seen = shard, set[int]()
        while True:
            if at not in where:
                where[at] = _departures(ledger.shard(at))
            target = where[at].get(stream)
            if target is None or target in seen:
                return False
            if target == owner:
                return True
            seen.add(target)
            at = target

    def moved_on(leaf: Leaf, digest: bytes) -> bool:
        stream = UUID(leaf.stream)
        found = ledger.directory.lookup(stream, fresh=True)
        if found is None or not owner_reached(stream, found.shard_id):
            return False
        owner = found.shard_id
        if owner not in caught_up:  # the copies there are in its tree
            ledger.shard(owner).catch_up_tree()
            caught_up.add(owner)
        itself = leaf.number if owner == shard else None
        return _holds(ledger.shard(owner), leaf, digest, itself)

    return moved_on


def _departures(shard: ContextLedger) -> dict[UUID, int]:
    datastore = shard._app.recorder.datastore  # type: ignore[attr-defined]
    schema = str(shard.storage.settings["POSTGRES_SCHEMA"])
    with datastore.transaction(commit=False) as cursor:
        return dict(moves_around(cursor, schema, 0, 0).departed)


def _holds(shard: ContextLedger, leaf: Leaf, digest: bytes, itself: int | None) -> bool:
    """Whether the shard's tree has a leaf of that event with that hash (other
    than the leaf ``itself``)."""
    tree = shard._tree()
    size = tree.store.state().size
    there = [
        found.number
        for found in tree.store.leaves_of(leaf.stream, size)
        if found.version == leaf.version and found.number != itself
    ]
    return digest in tree.leaf_hashes(there).values()
