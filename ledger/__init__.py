"""ctxledger: an event-sourced ledger of per-user execution contexts.

Everything a backend needs is importable from here; the rest is internal.
"""

from ledger.aio import AsyncContextLedger
from ledger.aio_feed import AsyncChangeFeed
from ledger.api import ContextLedger
from ledger.audit.chain import ChainBreak, ChainReport, UserChain
from ledger.audit.export import ExportFault, ExportManifest, ExportReport
from ledger.audit.export_check import verify_export
from ledger.domain.events import (
    ContextCleared,
    ContextCreated,
    ContextExpired,
    ContextReused,
    ContextUpdated,
    UserForgotten,
)
from ledger.domain.models import EVENT_KINDS, Context, EventKind, LedgerEvent
from ledger.domain.validation import PLACEHOLDERS
from ledger.errors import (
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
from ledger.store.codec import register as register_event_class
from ledger.store.feed import ChangeFeed

__all__ = [
    "EVENT_KINDS",
    "PLACEHOLDERS",
    "AsyncChangeFeed",
    "AsyncContextLedger",
    "ChainBreak",
    "ChainReport",
    "ChangeFeed",
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
    "LedgerClosed",
    "LedgerConfigError",
    "LedgerCorrupted",
    "LedgerError",
    "LedgerEvent",
    "LedgerNotFound",
    "StorageUnavailable",
    "UserChain",
    "UserForgotten",
    "register_event_class",
    "verify_export",
]
