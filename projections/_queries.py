"""The queries of the views: what is open, who did what when, and continuity."""

from datetime import datetime

from ledger._domain import validation
from ledger._domain.models import Context, EventKind
from ledger.log_source import StorageClient
from projections._active import ActiveContextsView
from projections._audit import AuditView
from projections._continuity import ContinuityView
from projections._errors import ViewNotBuilt
from projections._models import AuditRow, ContinuityFigures
from projections._store import ViewStore
from projections._view import Generation, View

MAX_ROWS = 2**63 - 1


class ViewQueries(StorageClient):
    """The views' queries, read from their live tables (``Projections``)."""

    _store: ViewStore
    _active: ActiveContextsView
    _audit: AuditView
    _continuity: ContinuityView
    _built: frozenset[str]
    _missing: dict[str, list[str]]

    # Queries of the active contexts view.

    def active_contexts(
        self, user_id: str | None = None, *, limit: int = 1000
    ) -> list[Context]:
        """The user's active contexts (everyone's, up to ``limit``), oldest first."""
        # More rows than a 64-bit LIMIT can count is no limit at all.
        most = min(validation.positive_int("limit", limit), MAX_ROWS)
        with self._store.reading() as tx:
            names = self._names(self._active)
            if user_id is None:
                return self._active.everyone(tx, names, most)
            user = validation.identifier("user_id", user_id)
            return self._active.by_user(tx, names, user, most)

    def active_context(self, context_id: str) -> Context | None:
        """The active context with this id (of any user), or None."""
        checked = validation.identifier("context_id", context_id)
        with self._store.reading() as tx:
            return self._active.by_context(tx, self._names(self._active), checked)

    def count_active(self, user_id: str | None = None) -> int:
        user = _optional_user(user_id)
        with self._store.reading() as tx:
            return self._active.count(tx, self._names(self._active), user)

    def expiring_before(self, at: datetime) -> list[Context]:
        """Active contexts whose expiry time is before ``at``, soonest first."""
        when = validation.aware_time("at", at)
        with self._store.reading() as tx:
            return self._active.expiring_before(tx, self._names(self._active), when)

    # Queries of the audit view.

    def audit_rows(
        self,
        user_id: str | None = None,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        kind: EventKind | None = None,
    ) -> list[AuditRow]:
        """Events in ledger order (on a sharded ledger: in order of time, then
        position), by user, period (since inclusive, until exclusive) and kind;
        each filter is optional."""
        start, end = validation.period(since, until)
        chosen = None if kind is None else validation.event_kind(kind)
        with self._store.reading() as tx:
            return self._audit.query(
                tx,
                self._names(self._audit),
                user_id=_optional_user(user_id),
                since=start,
                until=end,
                kind=chosen,
            )

    def count_audit(self) -> int:
        with self._store.reading() as tx:
            return self._audit.count(tx, self._names(self._audit))

    # Queries of the continuity view.

    def continuity(self, user_id: str | None = None) -> ContinuityFigures:
        """One user's continuity figures, or the totals over all users."""
        user = _optional_user(user_id)
        with self._store.reading() as tx:
            names = self._names(self._continuity)
            return self._continuity.figures(tx, names, user)

    def _names(self, view: View) -> dict[str, str]:
        """The view's live tables; ViewNotBuilt for a reader's view never built."""
        if view.name not in self._built:
            raise ViewNotBuilt(view.name, self._missing.get(view.name, ()))
        return view.names(self._store.dialect, Generation(view.name, rebuild=False))


def _optional_user(user_id: str | None) -> str | None:
    """A user id to filter by, checked as the ledger checks it; None for all."""
    return None if user_id is None else validation.identifier("user_id", user_id)
