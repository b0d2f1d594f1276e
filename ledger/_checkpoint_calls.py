"""The ledger's calls for the log's Merkle tree and its signed checkpoints.

``ContextLedger`` inherits them. A ledger keeps one tree per database: with
shards, one per shard, and shard ``i``'s checkpoints name the origin
``<key name>/shard/<i>`` (shard 0 keeps the key's name, as before it had
shards). ``ledger._sharded_checkpoints`` runs them on every shard.
"""

import threading
from collections.abc import Callable

from ledger import _tracing as tracing
from ledger._audit.checkpoint_files import (
    KeyInput,
    notes_from,
    signer_from,
    verifier_from,
)
from ledger._audit.checkpoints import (
    CheckpointReport,
    SignedCheckpoint,
    sign_tree,
    verify_tree,
)
from ledger._audit.export_proofs import ExportLog, prove_export
from ledger._audit.log_tree import LogTree, TreeHead
from ledger._audit.notes import (
    Verifier,
    open_checkpoint,
    origin_of,
    shard_of_origin,
)
from ledger._audit.tlog_proof import format_proof
from ledger._domain import validation
from ledger._domain.contexts import user_aggregate_id
from ledger._queries import LedgerQueries
from ledger._store.application import LedgerApplication
from ledger.errors import CheckpointError


class CheckpointCalls(LedgerQueries):
    """Keeping the log's tree, signing checkpoints and verifying them."""

    _app: LedgerApplication
    _log_tree: LogTree | None = None
    log_shard: int = 0
    """The shard whose database this ledger is (set by a sharded ledger; 0 for
    a ledger without shards): it names the origin of its checkpoints."""
    _tree_lock = threading.Lock()

    @tracing.traced("catch_up_tree")
    def catch_up_tree(self) -> TreeHead:
        """Takes every event up to the log's safe head into the Merkle tree; its
        size and root. ``ctxledger project`` runs it with the views."""
        return self._tree().catch_up()

    @tracing.traced("sign_checkpoint")
    def sign_checkpoint(self, key: KeyInput) -> SignedCheckpoint:
        """Signs a checkpoint of the log (caught up to its safe head) with
        ``key`` (the signer key's text or file, from ``write_checkpoint_key``)
        and keeps it; CheckpointError if the log no longer extends the last
        checkpoint signed. Its origin is the key's name."""
        signer = signer_from(key)
        return sign_tree(self._tree(), signer, self._origin(signer.name))

    @tracing.traced("sign_checkpoints")
    def sign_checkpoints(self, key: KeyInput) -> list[SignedCheckpoint]:
        """``sign_checkpoint`` of every log: one, or one per shard."""
        return [self.sign_checkpoint(key)]

    @tracing.traced("verify_checkpoint")
    def verify_checkpoint(
        self, note: KeyInput, public_key: KeyInput
    ) -> CheckpointReport:
        """Whether the log still extends the signed checkpoint ``note`` (its text
        or file): CheckpointError if the signature does not verify with
        ``public_key`` (text or file); else a report naming the first event that
        no longer matches, if any."""
        notes = notes_from(note)
        if len(notes) != 1:
            raise CheckpointError(
                f"{len(notes)} signed notes given, one expected; "
                "use verify_checkpoints for a file of several"
            )
        return self.verify_checkpoints(notes[0], public_key)[0]

    @tracing.traced("verify_checkpoints")
    def verify_checkpoints(
        self, notes: KeyInput, public_key: KeyInput
    ) -> list[CheckpointReport]:
        """``verify_checkpoint`` of each note of a text or file of notes."""
        verifier = verifier_from(public_key)
        return [
            self._verify_note(text, verifier, public_key) for text in notes_from(notes)
        ]

    @tracing.traced("prove_event")
    def prove_event(self, user_id: str, version: int) -> str:
        """A C2SP ``tlog-proof`` of the user's event ``version`` in the latest
        signed checkpoint: its leaf index, inclusion proof and the checkpoint,
        which ``verify_event_proof`` checks offline with the event and the
        verifier key. CheckpointError if no checkpoint covers the event."""
        user = validation.identifier("user_id", user_id)
        tree = self._tree()
        tree.ensure_tables()
        kept = tree.store.latest()
        stream = str(user_aggregate_id(user))
        leaves = [] if kept is None else tree.store.leaves_of(stream, kept.size)
        found = [leaf.number for leaf in leaves if leaf.version == version]
        if kept is None or not found:
            raise CheckpointError(
                f"no signed checkpoint covers version {version} of user {user!r}: "
                "sign one after the event was written (ctxledger checkpoint sign)"
            )
        proof = tree.inclusion_proof(found[-1], kept.size)
        return format_proof(found[-1], proof, kept.note)

    @tracing.traced("latest_checkpoint")
    def latest_checkpoint(self) -> str | None:
        """The note of the last checkpoint this ledger signed (None: none yet)."""
        tree = self._tree()
        tree.ensure_tables()
        kept = tree.store.latest()
        return None if kept is None else kept.note

    def _verify_note(
        self, note: str, verifier: Verifier, public_key: KeyInput
    ) -> CheckpointReport:
        """One note's check: its signature, then the log of its shard."""
        checkpoint = open_checkpoint(note, verifier)
        shard = shard_of_origin(checkpoint.origin, verifier.name)
        if shard != self.log_shard:
            raise CheckpointError(
                f"the checkpoint is of the log of shard {shard}; this ledger's "
                f"database is shard {self.log_shard}'s (0: a ledger without shards)"
            )
        return verify_tree(self._tree(), checkpoint)

    def _proofs(
        self, user_id: str, sign_with: KeyInput | None
    ) -> Callable[[list[int]], ExportLog | None]:
        """An export's proofs against the latest checkpoint (signed now, with
        ``sign_with``); none on a memory:// ledger."""
        if self.storage.kind == "memory":
            return super()._proofs(user_id, sign_with)
        tree = self._tree()
        if sign_with is not None:
            signer = signer_from(sign_with)
            sign_tree(tree, signer, self._origin(signer.name))
        tree.ensure_tables()
        kept = tree.store.latest()
        return lambda versions: prove_export(tree, user_id, versions, kept)

    def _origin(self, name: str) -> str:
        """The origin of this database's log under the key ``name``."""
        return origin_of(name, self.log_shard)

    def _tree(self) -> LogTree:
        with self._tree_lock:
            if self._log_tree is None:
                self._log_tree = LogTree(self._app)
            return self._log_tree
