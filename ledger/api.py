"""``ContextLedger``: the domain API that backends call."""

import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any, Self

from eventsourcing.persistence import PersistenceError

from ledger import metrics
from ledger.audit.chain import ChainReport
from ledger.audit.export import ExportManifest, write_export
from ledger.audit.history import History
from ledger.audit.verification import ChainVerifier
from ledger.domain import validation
from ledger.domain.contexts import UserContexts, evicts_context, user_aggregate_id
from ledger.domain.models import Context, LedgerEvent, OnLimit
from ledger.errors import (
    ContextNotFound,
    InvalidContextInput,
    LedgerConfigError,
    LedgerCorrupted,
    LedgerError,
)
from ledger.store.application import LedgerApplication, open_application, utc_now
from ledger.store.commands import CommandRunner, FirstCall
from ledger.store.due import DueIndex
from ledger.store.erasure import Erasure
from ledger.store.failures import StorageClient
from ledger.store.feed import ChangeFeed
from ledger.store.feed_hub import FeedHub
from ledger.store.keys import resolve_master_key
from ledger.store.urls import resolve_url, storage_for

Clock = Callable[[], datetime]


class ContextLedger(StorageClient):
    """Per-user execution contexts, every change an event in the user's stream.

    Open one with ``ContextLedger.open(url)``; it is safe to share between threads,
    and many processes may open the same database.
    """

    def __init__(
        self,
        application: LedgerApplication,
        *,
        max_contexts_per_user: int,
        default_ttl_seconds: float | None,
        clock: Clock = utc_now,
        on_limit: OnLimit = "refuse",
        create: bool = True,
    ) -> None:
        self._app = application
        self._history = History(application)
        self._erasure = Erasure(application, create=create)
        self._clock = clock
        self.storage = application.storage
        self.max_contexts_per_user = max_contexts_per_user
        self.on_limit = on_limit
        self.default_ttl_seconds = default_ttl_seconds
        self._due = DueIndex()
        self._commands = CommandRunner(application, self._now)
        self._due_lock = threading.Lock()
        self._feeds = FeedHub(
            reader=lambda: application.log_reader,
            records=application.records,
            backend=application.backend,
            storage=application.storage,
        )

    @classmethod
    def open(
        cls,
        url: str | None = None,
        *,
        max_contexts_per_user: int = 10,
        default_ttl_seconds: float | None = None,
        clock: Clock | None = None,
        create: bool = True,
        master_key: bytes | str | None = None,
        on_limit: OnLimit = "refuse",
    ) -> Self:
        """Opens the ledger at ``url`` (else CTXLEDGER_URL, else sqlite:///ctxledger.db).

        ``clock`` returns the current time (timezone-aware); the system clock if None.
        With ``create=False`` a URL that holds no ledger raises LedgerNotFound, and
        nothing is created (for readers). ``master_key`` (else CTXLEDGER_MASTER_KEY,
        else none) wraps the users' data keys: 32 bytes, or 64 hex digits, or
        URL-safe base64. ``on_limit`` says what opening a new context does for a
        user at ``max_contexts_per_user``: ``"refuse"`` raises
        ContextLimitExceeded; ``"evict"`` clears the user's least recently used
        context (a ``cleared`` event with reason ``"evicted"``, in the same
        append as the new ``created``).
        """
        limit = validation.positive_int(
            "max_contexts_per_user", max_contexts_per_user, setting=True
        )
        policy = validation.on_limit(on_limit)
        default_ttl = validation.ttl_seconds(default_ttl_seconds)
        if clock is not None and not callable(clock):
            raise LedgerConfigError(
                f"clock={clock!r} is not callable; pass a function that returns "
                "the current timezone-aware datetime, or None for the system clock"
            )
        if url is not None and not isinstance(url, str):
            raise LedgerConfigError(f"url={url!r} is not a str; pass a database URL")
        storage = storage_for(resolve_url(url))
        application = open_application(
            storage, create=create, master_key=resolve_master_key(master_key)
        )
        try:
            ledger = cls(
                application,
                max_contexts_per_user=limit,
                default_ttl_seconds=default_ttl,
                clock=clock or utc_now,
                on_limit=policy,
                create=create,
            )
            if create:  # a reader (create=False) may not write
                ledger._settle_erasures()
        except BaseException:
            application.close()
            raise
        return ledger

    # Commands.

    @metrics.metered("open_context")
    def open_context(
        self,
        user_id: str,
        thread_id: str,
        *,
        run_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        ttl_seconds: float | None = None,
        request_id: str | None = None,
    ) -> Context:
        """The thread's active context, reused; a new one if it has none.

        A ``request_id`` already applied for this user returns the first call's
        result and appends nothing (as do those of the other commands). A call
        that appended nothing (a refusal) leaves no trace: its repeat runs anew.
        """
        user = validation.identifier("user_id", user_id)
        thread = validation.identifier("thread_id", thread_id)
        run = validation.optional_identifier("run_id", run_id)
        patch = validation.metadata(metadata)
        ttl = validation.ttl_seconds(ttl_seconds)
        request = validation.optional_identifier("request_id", request_id)

        def open_in(aggregate: UserContexts) -> tuple[Context, int]:
            opened = aggregate.open(
                thread,
                run_id=run,
                metadata=patch,
                ttl_seconds=ttl,
                default_ttl_seconds=self.default_ttl_seconds,
                now=self._now(),
                limit=self.max_contexts_per_user,
                on_limit=self.on_limit,
            )
            return opened, sum(map(evicts_context, aggregate.pending))

        opened, evicted = self._commands.run(
            user,
            open_in,
            request_id=request,
            repeat=lambda first: (
                _context_of(first, ("created", "reused"), thread=thread),
                0,  # counted by the first call
            ),
        )
        metrics.count_evictions(evicted)
        return _detached(opened)

    @metrics.metered("update_context")
    def update_context(
        self,
        user_id: str,
        context_id: str,
        *,
        run_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        request_id: str | None = None,
    ) -> Context:
        """Merges ``metadata`` (None removes a key) and may set a new run id."""
        user = validation.identifier("user_id", user_id)
        context = validation.identifier("context_id", context_id)
        run = validation.optional_identifier("run_id", run_id)
        patch = validation.metadata(metadata)
        request = validation.optional_identifier("request_id", request_id)
        updated = self._commands.run(
            user,
            lambda aggregate: aggregate.update(
                context, run_id=run, metadata=patch, now=self._now()
            ),
            request_id=request,
            repeat=lambda first: _context_of(first, ("updated",), context_id=context),
        )
        return _detached(updated)

    @metrics.metered("clear_context")
    def clear_context(
        self,
        user_id: str,
        context_id: str,
        *,
        reason: str = "cleared",
        request_id: str | None = None,
    ) -> None:
        """Ends one of the user's contexts. The reason ``"evicted"`` is the
        ledger's own (``on_limit="evict"``) and is refused."""
        user = validation.identifier("user_id", user_id)
        context = validation.identifier("context_id", context_id)
        why = validation.clear_reason(reason)
        request = validation.optional_identifier("request_id", request_id)
        self._commands.run(
            user,
            lambda aggregate: aggregate.clear(context, reason=why, now=self._now()),
            request_id=request,
            repeat=lambda first: _ended(first, context_id=context),
        )

    @metrics.metered("clear_user")
    def clear_user(
        self,
        user_id: str,
        *,
        reason: str = "cleared",
        request_id: str | None = None,
    ) -> int:
        """Ends all of the user's contexts; returns how many were cleared. The
        reason ``"evicted"`` is refused, as by ``clear_context``."""
        user = validation.identifier("user_id", user_id)
        why = validation.clear_reason(reason)
        request = validation.optional_identifier("request_id", request_id)
        cleared: int = self._commands.run(
            user,
            lambda aggregate: aggregate.clear_all(reason=why, now=self._now()),
            request_id=request,
            repeat=_ended,
        )
        return cleared

    @metrics.metered("expire_due")
    def expire_due(self) -> int:
        """Records the expiry of every context past its time, for all users.

        A user whose stored events cannot be decoded or replayed does not stop the
        others: their expiries are recorded, then LedgerCorrupted names the first
        damaged user (and a note how many there were and what was recorded).
        """
        with self._due_lock:
            self._due.catch_up(self._app.log_reader, self._app.mapper)
            users = self._due.users_due(self._now())
            damaged = {
                stream: LedgerCorrupted(user, why)
                for stream, (user, why) in self._due.damaged.items()
            }
        self._settle_erasures()
        expired = 0
        for user in users:
            try:
                expired += self._commands.run(
                    user, lambda aggregate: aggregate.expire_due(self._now())
                )
            except LedgerCorrupted as corrupted:
                damaged[user_aggregate_id(user)] = corrupted
            except (LedgerError, PersistenceError) as error:
                if expired:
                    error.add_note(
                        f"expire_due had already recorded {expired} expiries of "
                        "other users; run it again to record the rest"
                    )
                raise
        if damaged:
            first = next(iter(damaged.values()))
            first.add_note(
                f"expire_due recorded {expired} expiries of other users; "
                f"{len(damaged)} user(s) with damaged events were skipped: "
                + ", ".join(sorted(error.user_id for error in damaged.values())[:10])
            )
            raise first
        return expired

    @metrics.metered("forget_user")
    def forget_user(self, user_id: str, *, reason: str = "erasure request") -> int:
        """Erases the user's personal data (the metadata of every event and
        snapshot) and returns how many events' personal data became unreadable.

        It appends a ``forgotten`` event with ``reason``, which ends the user's
        active contexts, then destroys the user's data key. The events stay, with
        their metadata shown as erased, and every hash chain still verifies. New
        activity of the user starts under a new key. Calling it again erases
        nothing more and appends nothing (it returns 0).
        """
        user = validation.identifier("user_id", user_id)
        why = validation.reason(reason)
        return self._forget(user, why, inactive_since=None)[1]

    @metrics.metered("forget_inactive")
    def forget_inactive(
        self, inactive_since: datetime, *, reason: str | None = None
    ) -> dict[str, int]:
        """Retention: forgets every user whose last event is before
        ``inactive_since`` (users already forgotten since are left alone, and so
        is a user who becomes active while it runs). Returns, per user forgotten,
        how many events' personal data was erased.
        """
        since = validation.aware_time("inactive_since", inactive_since)
        why = validation.reason(
            reason
            if reason is not None
            else f"retention: no activity since {since.isoformat()}"
        )
        forgotten = self._settle_erasures()
        damaged: list[LedgerCorrupted] = []
        for user in self._erasure.inactive_users(since):
            try:
                appended, erased = self._forget(user, why, inactive_since=since)
            except LedgerCorrupted as corrupted:  # its keys are destroyed anyway
                damaged.append(corrupted)
                continue
            if appended or erased:
                forgotten[user] = erased
        if damaged:
            first = damaged[0]
            first.add_note(
                f"forget_inactive forgot {len(forgotten)} other user(s); "
                f"{len(damaged)} user(s) with damaged events had their keys "
                "destroyed but no forgotten event: "
                + ", ".join(sorted(error.user_id for error in damaged)[:10])
            )
            raise first
        return forgotten

    def _forget(
        self, user: str, why: str, *, inactive_since: datetime | None
    ) -> tuple[bool, int]:
        """Appends the user's ``forgotten`` event (if there is anything to forget,
        and the user is still inactive), then destroys the retired keys: whether it
        appended, and how many events were erased."""

        def forget(aggregate: UserContexts) -> tuple[bool, int, bool]:
            appended = aggregate.forget(
                reason=why, now=self._now(), inactive_since=inactive_since
            )
            if appended:  # marked before the append: an interruption is found
                self._erasure.begin(user, aggregate.key_generation)
            forgotten = aggregate.version == aggregate.forgotten_at
            return appended, aggregate.key_generation, forgotten

        try:
            appended, generation, forgotten = self._commands.run(user, forget)
        except LedgerCorrupted as damaged:
            # Its events do not replay, so no event can be appended; its personal
            # data is erased all the same.
            self._erasure.destroy_all_keys(user)
            damaged.add_note(
                "forget_user destroyed all of the user's data keys anyway (their "
                "metadata is erased); no forgotten event could be appended"
            )
            raise
        if not forgotten:
            return False, 0  # active again since it was listed: left alone
        try:
            # An erasure in progress (its keys not destroyed yet) is finished.
            erased: int = self._erasure.finish(user, generation)
        except LedgerError as failure:
            if appended:
                failure.add_note(
                    f"the forgotten event of user {user!r} was recorded, but the "
                    "user's data key may not be destroyed yet: run "
                    f"forget_user({user!r}) again"
                )
            raise
        return appended, erased

    def inactive_users(self, inactive_since: datetime) -> list[str]:
        """The users ``forget_inactive(inactive_since)`` would forget: whose last
        event is before it and is not their erasure."""
        since = validation.aware_time("inactive_since", inactive_since)
        users: list[str] = self._erasure.inactive_users(since)
        return users

    def _settle_erasures(self) -> dict[str, int]:
        """Finishes the erasures that were cut short (see ``ledger.store.erasure``)."""
        return self._erasure.settle(lambda user: self._app.load(user, self._now()))

    # Queries: they never append.

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
        return _detached(context)

    def active_contexts(self, user_id: str) -> list[Context]:
        """The user's active, unexpired contexts, oldest first."""
        user = validation.identifier("user_id", user_id)
        now = self._now()
        aggregate = self._app.load(user, now)
        live = aggregate.live(aggregate.time_of(now))
        ordered = sorted(live, key=lambda c: (c.created_at, c.context_id))
        return [_detached(context) for context in ordered]

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
            return verifier.all_users(on_page)
        return verifier.one_user(validation.identifier("user_id", user_id))

    def chain_size(self) -> int:
        """How many events ``verify_chain()`` reads at most: the log's last position."""
        return ChainVerifier(self._app).head()

    def changes(
        self, user_id: str | None = None, *, after: int | None = None
    ) -> ChangeFeed:
        """Every event stored after position ``after`` (the log's head now when
        None), by any process, in log order, each once, as ``(position, event)``;
        only ``user_id``'s when given. Iterating blocks until the next event;
        ``close()`` the feed (or leave its ``with`` block) to stop.

        All of a ledger's feeds share one reader of the log (``FeedHub``): an idle
        feed costs memory, not queries. With ``after`` given, the head is read
        only if ``after`` lies beyond the head this ledger last read: a start
        beyond the log's head is refused (InvalidContextInput), since this
        ledger never gave that position.
        """
        user = validation.optional_identifier("user_id", user_id)
        start = None if after is None else validation.log_position("after", after)
        return ChangeFeed(self._feeds, user, start)

    def _before_close(self) -> None:
        # Its feeds end (reads under way finish first), then the connections close.
        self._feeds.close()

    def export(
        self,
        user_id: str,
        path: str | Path,
        *,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> ExportManifest:
        """Writes the user's events (in the period) to an export file at ``path``.

        The file is written whole or not at all; check it with ``verify_export``.
        """
        user = validation.identifier("user_id", user_id)
        start, end = validation.period(since, until)
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
        )

    def _now(self) -> datetime:
        now = self._clock()
        if not isinstance(now, datetime) or now.tzinfo is None:
            raise LedgerConfigError(
                f"the clock returned {now!r}, not a timezone-aware datetime; "
                "make it return one, e.g. datetime.now(tz=UTC)"
            )
        return now.astimezone(UTC)


def _detached(context: Context) -> Context:
    """A copy the caller may change without touching the ledger's cached state.

    Only ``metadata`` can be changed in place (the model is frozen), so only it is
    copied; it holds plain JSON values (validation made sure).
    """
    return context.model_copy(update={"metadata": _copy_tree(context.metadata)})


def _copy_tree(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _copy_tree(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_copy_tree(item) for item in value]
    return value


_OPENED = ("created", "reused")


def _context_of(
    first: FirstCall,
    kinds: tuple[str, ...],
    *,
    thread: str | None = None,
    context_id: str | None = None,
) -> Context:
    """The context a repeated open or update returned the first time."""
    last = first.events[-1] if first.events else None
    if (
        last is None
        or last.KIND not in kinds
        or thread not in (None, last.thread_id)
        or context_id not in (None, last.context_id)
    ):
        raise _reused_for_another_call(first)
    return first.context_after(last.context_id)


def _ended(first: FirstCall, context_id: str | None = None) -> int:
    """How many contexts a repeated clear ended the first time by clearing."""
    if not first.events or any(
        event.KIND not in ("cleared", "expired")
        or context_id not in (None, event.context_id)
        for event in first.events
    ):
        raise _reused_for_another_call(first)
    return sum(event.KIND == "cleared" for event in first.events)


def _reused_for_another_call(first: FirstCall) -> InvalidContextInput:
    event = first.events[-1] if first.events else None
    return InvalidContextInput(
        "request_id",
        None if event is None else event.request_id,
        "was already used by another kind of call of this user"
        + ("" if event is None else f" (version {event.originator_version})"),
        "give each call its own request_id, and the same one only to a repeat",
    )
