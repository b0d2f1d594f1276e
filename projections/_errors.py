"""Errors of the projections: the ``ProjectionError`` branch under the ledger's root
error ``LedgerError``. The whole tree is drawn once, in ``ledger.errors``."""

from collections.abc import Sequence

from ledger.errors import LedgerError, shorten


class ProjectionError(LedgerError):
    """A view cannot be processed or read."""


class UndecodableEvent(ProjectionError):
    """The stored event at ``position`` cannot be decoded; processing stopped there."""

    _fields = ("position", "reason")

    def __init__(self, position: int, reason: str) -> None:
        self.position = position
        self.reason = reason
        super().__init__(
            f"the stored event at position {position} cannot be decoded "
            f"({shorten(reason)}); processing stopped before it and nothing after it "
            "was applied. Fix or restore that event, then run the projections again"
        )


class ViewCannotApply(ProjectionError):
    """The ``view`` cannot apply the stored event at ``position`` (of ``user_id``)
    for a reason in the event's values or the view's rows, not an unreachable
    database; the view stopped before it."""

    _fields = ("view", "position", "user_id", "cause")

    def __init__(self, view: str, position: int, user_id: str, cause: str) -> None:
        self.view = view
        self.position = position
        self.user_id = user_id
        self.cause = cause
        super().__init__(
            f"the {view} view cannot apply the event at position {position} (user "
            f"{shorten(user_id)}): {' '.join(cause.split())[:300]}; the view stopped "
            "before it, with the events before it applied and none after it. Run "
            f"`ctxledger verify`, then `ctxledger rebuild {view}`; if the rebuild "
            "stops at this event too, the view cannot keep its values: report the "
            "position and this message"
        )


class UnknownView(ProjectionError, ValueError):
    """A view name that is not one of the views."""

    _fields = ("name", "known")

    def __init__(self, name: str, known: tuple[str, ...]) -> None:
        self.name = name
        self.known = known
        super().__init__(f"there is no view {name!r}; the views are {', '.join(known)}")


class ViewsNeedDurableStorage(ProjectionError):
    """Views are tables in the ledger's database; memory:// has none."""

    _fields = ("url",)

    def __init__(self, url: str) -> None:
        self.url = url
        super().__init__(
            f"views need SQLite or PostgreSQL storage, not {url!r}: they are tables "
            "beside the ledger's events"
        )


class ViewNotBuilt(ProjectionError):
    """A reader (``create=False``) asked a view whose tables were never built, or
    were built by an earlier release and lack the ``missing`` columns."""

    _fields = ("view", "missing")

    def __init__(self, view: str, missing: Sequence[str] = ()) -> None:
        self.view = view
        self.missing = tuple(missing)
        problem = (
            f"was built by an earlier release and lacks {', '.join(self.missing)}"
            if self.missing
            else "has not been built in this ledger"
        )
        action = "upgrade" if self.missing else "build"
        super().__init__(
            f"the {view} view {problem}; run `ctxledger project` (or "
            f"Projections.open(url).catch_up()) to {action} it"
        )


class PositionsPerShard(ProjectionError, TypeError):
    """A sharded ledger's views keep one position per shard, so a single position
    does not say how far they are."""

    _fields = ("call",)

    def __init__(self, call: str) -> None:
        self.call = call
        super().__init__(
            f"{call} takes or gives one position, but the views of a sharded "
            "ledger keep one per shard: use heads() and pass that mapping "
            "(shard -> position) to wait()"
        )


class RebuildPartFailed(ProjectionError):
    """The process that read one shard's log for a rebuild ended without
    finishing; nothing was swapped in."""

    _fields = ("shard", "exit_code", "detail")

    def __init__(
        self, shard: int, exit_code: int | None, detail: str | None = None
    ) -> None:
        self.shard = shard
        self.exit_code = exit_code
        self.detail = detail
        how = detail or f"it ended with exit code {exit_code}"
        super().__init__(
            f"the rebuild's process for shard {shard} did not finish ({how}); "
            "the live views are unchanged: run the rebuild again"
        )
