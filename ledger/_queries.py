"""``LedgerQueries``: the reads of ``ContextLedger``, which never append.

``ContextLedger`` inherits them and adds the commands; backends use that class.
"""

import sys
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path

from ledger import _tracing as tracing
from ledger._audit.chain import ChainReport
from ledger._audit.checkpoint_files import KeyInput
from ledger._audit.export import ExportManifest, write_export
from ledger._audit.export_proofs import ExportLog
from ledger._audit.history import History
from ledger._audit.verification import ChainVerifier
from ledger._domain import validation
from ledger._domain.models import Context, LedgerEvent
from ledger._feed_positions import single_position
from ledger._results import detached
from ledger._store.application import LedgerApplication
from ledger._store.failures import StorageClient
from ledger._store.feed import ChangeFeed
from ledger._store.feed_hub import FeedHub
from ledger.errors import ContextNotFound, LedgerConfigError

Clock = Callable[[], datetime]


class LedgerQueries(StorageClient):
    """The ledger's queries, on the state ``ContextLedger`` sets up."""

    _app: LedgerApplication
    _history: History
    _feeds: FeedHub
    _clock: Clock

    @tracing.traced("get_context")
    def get_context(self, user_id: str, thread_id: str) -> Context | None:
        """The thread's active, unexpired context, or None."""
        user = validation.identifier("user_id", user_id)
        thread = validation.identifier("thread_id", thread_id)
        now = self._now()
        aggregate = self._app.load(user, now)
        now = aggregate.time_of(now)
        context = aggregate.for_thread(thread)
        if context is None or context.is_due(now):
            return None
        return detached(context)

    @tracing.traced("active_contexts")
    def active_contexts(self, user_id: str) -> list[Context]:
        """The user's active, unexpired contexts, oldest first."""
        user = validation.identifier("user_id", user_id)
        now = self._now()
        aggregate = self._app.load(user, now)
        live = aggregate.live(aggregate.time_of(now))
        ordered = sorted(live, key=lambda c: (c.created_at, c.context_id))
        return [detached(context) for context in ordered]

    @tracing.traced("history")
    def history(
        self,
        user_id: str,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
    ) -> list[LedgerEvent]:
        """The user's events in order; ``since`` inclusive, ``until`` exclusive; the
        first ``limit`` of them if given."""
        user = validation.identifier("user_id", user_id)
        start, end = validation.period(since, until)
        most = None if limit is None else validation.positive_int("limit", limit)
        events = self._history.records_between(user, start, end)
        # A limit beyond any log's length means all of them.
        shown = islice(events, None if most is None else min(most, sys.maxsize))
        return [event.to_ledger_event() for event in shown]

    @tracing.traced("contexts_as_of")
    def contexts_as_of(self, user_id: str, as_of: datetime) -> list[Context]:
        """The user's active contexts as they stood at ``as_of``, oldest first.

        Read from the event store: events at or before ``as_of`` are replayed from
        the newest usable snapshot before it. A context whose time to live had run
        out by then is not active, even if its expiry was recorded later.
        """
        user = validation.identifier("user_id", user_id)
        at = validation.aware_time("as_of", as_of)
        state = self._history.state_as_of(user, at)
        live = [] if state is None else state.live(at)
        return sorted(live, key=lambda c: (c.created_at, c.context_id))

    @tracing.traced("context_history")
    def context_history(self, user_id: str, context_id: str) -> list[LedgerEvent]:
        """Every event of one of the user's contexts, ended ones included.

        ContextNotFound if the user never had it (another user's id included).
        """
        user = validation.identifier("user_id", user_id)
        context = validation.identifier("context_id", context_id)
        events = [e.to_ledger_event() for e in self._history.of_context(user, context)]
        if not events:
            raise ContextNotFound(user, context, in_history=True)
        return events

    @tracing.traced("verify_chain")
    def verify_chain(
        self,
        user_id: str | None = None,
        *,
        on_page: Callable[[int], None] | None = None,
    ) -> ChainReport:
        """Recomputes the hash chain of one user, or of all users, from the store.

        ``on_page(n)`` is called as each page of ``n`` events is checked (all users).
        """
        verifier = ChainVerifier(self._app)
        if user_id is None:
            progress = None if on_page is None else tracing.outside_call(on_page)
            return verifier.all_users(progress)
        return verifier.one_user(validation.identifier("user_id", user_id))

    @tracing.traced("chain_size")
    def chain_size(self) -> int:
        """How many events ``verify_chain()`` reads at most: the log's last position."""
        return ChainVerifier(self._app).head()

    def changes(
        self, user_id: str | None = None, *, after: int | str | None = None
    ) -> ChangeFeed:
        """Every event stored after position ``after`` (the log's head now when
        None), by any process, in log order, each once, as ``(position, event)``;
        only ``user_id``'s when given. Iterating blocks until the next event;
        ``close()`` the feed (or leave its ``with`` block) to stop.

        All of a ledger's feeds share one reader of the log (``FeedHub``): an idle
        feed costs memory, not queries. With ``after`` given, the head is read
        only if ``after`` lies beyond the head this ledger last read: a start
        beyond the log's head is refused (InvalidContextInput), since this
        ledger never gave that position. ``after`` may be given as its digits
        (a position that came back through a URL).
        """
        user = validation.optional_identifier("user_id", user_id)
        start = None if after is None else single_position("after", after)
        return ChangeFeed(self._feeds, user, start)

    @tracing.traced("export")
    def export(
        self,
        user_id: str,
        path: str | Path,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
        sign_with: KeyInput | None = None,
    ) -> ExportManifest:
        """Writes the user's events (in the period) to an export file at ``path``.

        The file is written whole or not at all; check it with ``verify_export``.
        It carries the latest signed checkpoint and each event's inclusion proof;
        ``sign_with`` (a checkpoint signer key, text or file) signs a checkpoint
        first, so that every event exported is covered.
        """
        user = validation.identifier("user_id", user_id)
        start, end = validation.period(since, until)
        prove = self._proofs(user, sign_with)
        events = self._history.events_between(user, start, end)
        return write_export(
            path,
            # As written: an event upcast to a newer class exports its stored form,
            # which its chain hash covers.
            (LedgerEvent.model_validate(event.written_record()) for event in events),
            user_id=user,
            since=start,
            until=end,
            exported_at=self._now(),
            prove=prove,
        )

    def _proofs(
        self, user_id: str, sign_with: KeyInput | None
    ) -> Callable[[list[int]], ExportLog | None]:
        """How an export proves its events in the signed log (none here)."""
        if sign_with is not None:
            raise LedgerConfigError("this ledger keeps no signed checkpoints")
        return lambda _: None

    def _now(self) -> datetime:
        now = self._clock()
        if not isinstance(now, datetime) or now.tzinfo is None:
            raise LedgerConfigError(
                f"the clock returned {now!r}, not a timezone-aware datetime; "
                "make it return one, e.g. datetime.now(tz=UTC)"
            )
        return now.astimezone(UTC)
