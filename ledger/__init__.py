"""ctxledger: an event-sourced ledger of per-user execution contexts.

Everything a backend needs is importable from here; the rest is internal.
"""

from ledger.api import ContextLedger
from ledger.chain import ChainBreak, ChainReport, UserChain
from ledger.errors import (
    ConcurrencyConflict,
    ContextLimitExceeded,
    ContextNotFound,
    InvalidContextInput,
    LedgerConfigError,
    LedgerCorrupted,
    LedgerError,
    StorageUnavailable,
)
from ledger.export import ExportFault, ExportManifest, ExportReport, verify_export
from ledger.models import EVENT_KINDS, Context, EventKind, LedgerEvent
from ledger.validation import PLACEHOLDERS

__all__ = [
    "EVENT_KINDS",
    "PLACEHOLDERS",
    "ChainBreak",
    "ChainReport",
    "ConcurrencyConflict",
    "Context",
    "ContextLedger",
    "ContextLimitExceeded",
    "ContextNotFound",
    "EventKind",
    "ExportFault",
    "ExportManifest",
    "ExportReport",
    "InvalidContextInput",
    "LedgerConfigError",
    "LedgerCorrupted",
    "LedgerError",
    "LedgerEvent",
    "StorageUnavailable",
    "UserChain",
    "verify_export",
]
