"""ctxledger: an event-sourced ledger of per-user execution contexts.

Everything a backend needs is importable from here; the rest is internal.
"""

from ledger.api import ContextLedger
from ledger.errors import (
    ConcurrencyConflict,
    ContextLimitExceeded,
    ContextNotFound,
    InvalidContextInput,
    LedgerConfigError,
    LedgerError,
    StorageUnavailable,
)
from ledger.models import EVENT_KINDS, Context, EventKind, LedgerEvent
from ledger.validation import PLACEHOLDERS

__all__ = [
    "EVENT_KINDS",
    "PLACEHOLDERS",
    "ConcurrencyConflict",
    "Context",
    "ContextLedger",
    "ContextLimitExceeded",
    "ContextNotFound",
    "EventKind",
    "InvalidContextInput",
    "LedgerConfigError",
    "LedgerError",
    "LedgerEvent",
    "StorageUnavailable",
]
