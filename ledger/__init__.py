"""ctxledger: an event-sourced ledger of per-user execution contexts.

Everything a backend needs is importable from here; the rest is internal.
"""

from ledger._aio import AsyncContextLedger
from ledger._aio_feed import AsyncChangeFeed
from ledger._api import ContextLedger
from ledger._audit.chain import ChainBreak, ChainReport, UserChain
from ledger._audit.checkpoint_files import write_key_pair as write_checkpoint_key
from ledger._audit.checkpoints import CheckpointReport, LeafFault, SignedCheckpoint
from ledger._audit.export import ExportFault, ExportManifest, ExportReport
from ledger._audit.export_check import verify_export
from ledger._audit.log_tree import TreeHead
from ledger._audit.tlog_proof import verify_event_proof
from ledger._domain.events import (
    ContextCleared,
    ContextCreated,
    ContextExpired,
    ContextReused,
    ContextUpdated,
    UserForgotten,
)
from ledger._domain.models import EVENT_KINDS, Context, EventKind, LedgerEvent
from ledger._domain.validation import PLACEHOLDERS
from ledger._exposition import metrics_exposition
from ledger._store.codec import register as register_event_class
from ledger._store.feed import ChangeFeed
from ledger.errors import (
    CheckpointError,
    ConcurrencyConflict,
    ContextLimitExceeded,
    ContextNotFound,
    InvalidContextInput,
    LedgerClosed,
    LedgerConfigError,
    LedgerCorrupted,
    LedgerError,
    LedgerNotFound,
    StorageUnavailable,
)

__all__ = [
    "EVENT_KINDS",
    "PLACEHOLDERS",
    "AsyncChangeFeed",
    "AsyncContextLedger",
    "ChainBreak",
    "ChainReport",
    "ChangeFeed",
    "CheckpointError",
    "CheckpointReport",
    "ConcurrencyConflict",
    "Context",
    "ContextCleared",
    "ContextCreated",
    "ContextExpired",
    "ContextLedger",
    "ContextLimitExceeded",
    "ContextNotFound",
    "ContextReused",
    "ContextUpdated",
    "EventKind",
    "ExportFault",
    "ExportManifest",
    "ExportReport",
    "InvalidContextInput",
    "LeafFault",
    "LedgerClosed",
    "LedgerConfigError",
    "LedgerCorrupted",
    "LedgerError",
    "LedgerEvent",
    "LedgerNotFound",
    "SignedCheckpoint",
    "StorageUnavailable",
    "TreeHead",
    "UserChain",
    "UserForgotten",
    "metrics_exposition",
    "register_event_class",
    "verify_event_proof",
    "verify_export",
    "write_checkpoint_key",
]
