"""Every error the ledger and its views raise on purpose, under one root.

    LedgerError
    ├── InvalidContextInput (also ValueError)   bad ids, metadata, ttl, reason or time
    ├── ContextNotFound (also LookupError)      unknown, ended or another user's id
    ├── ContextLimitExceeded                    the user has too many active contexts
    ├── ConcurrencyConflict                     writers kept colliding on one user
    ├── LedgerConfigError (also ValueError)     a database URL or setting is unusable
    ├── LedgerNotFound (also LookupError)       no ledger at the URL (create=False)
    ├── LedgerClosed (also RuntimeError)        a call on a ledger already closed
    ├── LedgerCorrupted                         stored events cannot be replayed
    ├── CheckpointError (also ValueError)       a checkpoint, note or key is bad
    ├── StorageUnavailable (also ConnectionError)  the database failed
    └── ProjectionError                         a view cannot go on
        ├── UndecodableEvent                    a stored event cannot be decoded
        ├── ViewCannotApply                     a view cannot apply an event
        ├── UnknownView (also ValueError)       no view of that name
        ├── ViewNotBuilt                        a reader asked a view never built
        └── ViewsNeedDurableStorage             memory:// keeps no tables for views

The projections' branch is defined in ``projections._errors``.

Each error carries the values that explain it and says what to do.
"""

import shlex

_SHOWN_CHARS = 60


def shorten(value: object) -> str:
    """The repr of a value, cut to a readable length for error messages."""
    text = repr(value)
    if len(text) <= _SHOWN_CHARS:
        return text
    return f"{text[: _SHOWN_CHARS - 3]}... ({len(text)} chars)"


class LedgerError(Exception):
    """Root of every error the ledger raises on purpose."""

    _fields: tuple[str, ...] = ()

    def __reduce__(self) -> tuple[type["LedgerError"], tuple[object, ...]]:
        # Rebuild from the constructor's arguments, so errors cross process pools.
        if not self._fields:
            return type(self), self.args
        return type(self), tuple(getattr(self, name) for name in self._fields)


class InvalidContextInput(LedgerError, ValueError):
    """An argument failed validation; nothing was appended."""

    _fields = ("field", "value", "problem", "fix")

    def __init__(self, field: str, value: object, problem: str, fix: str) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        self.fix = fix
        super().__init__(f"{field}={shorten(value)} {problem}; {fix}")


class ContextNotFound(LedgerError, LookupError):
    """No active context with this id exists for this user."""

    _fields = ("user_id", "context_id", "in_history")

    def __init__(self, user_id: str, context_id: str, in_history: bool = False) -> None:
        self.user_id = user_id
        self.context_id = context_id
        self.in_history = in_history
        if in_history:
            message = (
                f"user {shorten(user_id)} has no context {shorten(context_id)} in "
                "its history: it was never opened for this user; list the user's "
                "events with history(user_id) to find its context ids"
            )
        else:
            message = (
                f"no active context {shorten(context_id)} for user "
                f"{shorten(user_id)}: it was never opened for this user, or it was "
                "cleared or has expired; call open_context(user_id, thread_id) to "
                "get the thread's context"
            )
        super().__init__(message)


class ContextLimitExceeded(LedgerError):
    """Opening one more context would exceed the per-user limit."""

    _fields = ("user_id", "limit")

    def __init__(self, user_id: str, limit: int) -> None:
        self.user_id = user_id
        self.limit = limit
        super().__init__(
            f"user {shorten(user_id)} already has {limit} active contexts, the limit; "
            "clear_context() one that is no longer needed, reuse an existing thread, "
            "or open the ledger with a higher max_contexts_per_user, or with "
            "on_limit='evict' to end the least recently used one instead"
        )


class ConcurrencyConflict(LedgerError):
    """Concurrent writers to one user kept winning; the command was not applied."""

    _fields = ("user_id", "attempts")

    def __init__(self, user_id: str, attempts: int) -> None:
        self.user_id = user_id
        self.attempts = attempts
        super().__init__(
            f"user {shorten(user_id)} was changed by other writers during each of "
            f"{attempts} attempts; this command was not applied; retry it later"
        )


class LedgerConfigError(LedgerError, ValueError):
    """The ledger cannot be opened with the given URL or settings."""


class LedgerNotFound(LedgerError, LookupError):
    """No ledger is stored at the URL, and the caller asked not to create one."""

    _fields = ("where",)

    def __init__(self, where: str) -> None:
        self.where = where
        super().__init__(
            f"no ledger at {where}: nothing was created; check the URL (--db or "
            "CTXLEDGER_URL), or write to it first (open_context, or `ctxledger demo`)"
        )


class LedgerClosed(LedgerError, RuntimeError):
    """A call was made on a ledger (or its views) that is closed or closing."""

    def __init__(self) -> None:
        super().__init__(
            "the ledger is closed: nothing was done; open it again to go on"
        )

    def __reduce__(self) -> tuple[type["LedgerError"], tuple[object, ...]]:
        return type(self), ()


class StorageUnavailable(LedgerError, ConnectionError):
    """The ledger's database cannot be reached, opened, read or written.

    ``writing``: a write failed; ``unknown``: whether it was stored could not be
    found out (the reply was lost and the store could not be read after).
    """

    _fields = ("where", "cause", "writing", "unknown")

    def __init__(
        self,
        where: str,
        cause: BaseException,
        writing: bool = False,
        unknown: bool = False,
    ) -> None:
        self.where = where
        self.cause = cause
        self.writing = writing
        self.unknown = unknown
        detail = " ".join(str(cause).split()) or type(cause).__name__
        if unknown:
            outcome = (
                "it is unknown whether the write was stored; repeat the call with "
                "the same request_id (the ledger applies it once) when the "
                "database is back; "
            )
        elif writing:
            outcome = "the failed write appended nothing; "
        else:
            outcome = ""
        super().__init__(
            f"the ledger's database ({where}) failed: {detail}; {outcome}check that "
            "the database is running, reachable and not locked, and that the URL is "
            "right"
        )


class LedgerCorrupted(LedgerError):
    """A user's stored events cannot be decoded or replayed: the store was changed
    outside the ledger."""

    _fields = ("user_id", "detail")

    def __init__(self, user_id: str, detail: str) -> None:
        self.user_id = user_id
        self.detail = detail
        super().__init__(
            f"the stored events of user {shorten(user_id)} cannot be replayed: "
            f"{' '.join(detail.split())[:300]}; nothing was appended; find the "
            f"fault with `ctxledger verify --chain --user {shlex.quote(user_id)}`"
        )


class CheckpointError(LedgerError, ValueError):
    """A checkpoint, a signed note or a key is malformed or does not verify; says
    which."""
