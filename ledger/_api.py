"""``ContextLedger``: the domain API that backends call.

The commands live here; the queries (which never append) in ``ledger._queries``,
which ``ContextLedger`` inherits.
"""

import threading
from datetime import datetime
from typing import Any, Self, cast

import psycopg
from eventsourcing.persistence import PersistenceError

from ledger import _metrics as metrics
from ledger import _tracing as tracing
from ledger._audit.history import History
from ledger._checkpoint_calls import CheckpointCalls
from ledger._domain import validation
from ledger._domain.contexts import UserContexts, user_aggregate_id
from ledger._domain.models import Context, OnLimit
from ledger._domain.transitions import evicts_context
from ledger._queries import Clock
from ledger._results import context_of, detached, ended
from ledger._settings import closed_on_failure, settings_of
from ledger._store.application import LedgerApplication, open_application, utc_now
from ledger._store.commands import CommandRunner
from ledger._store.due import DueIndex
from ledger._store.erasure import Erasure
from ledger._store.feed_hub import FeedHub
from ledger._store.keys import resolve_master_key
from ledger._store.shard_guard import refusal_of
from ledger._store.urls import Storage, resolve_url, storage_for
from ledger.errors import (
    ConcurrencyConflict,
    LedgerConfigError,
    LedgerCorrupted,
    LedgerError,
)


class ContextLedger(CheckpointCalls):
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
        settings = settings_of(
            max_contexts_per_user, default_ttl_seconds, clock, on_limit
        )
        if url is not None and not isinstance(url, str):
            raise LedgerConfigError(f"url={url!r} is not a str; pass a database URL")
        resolved = resolve_url(url)
        storage = storage_for(resolved)
        key = resolve_master_key(master_key)

        def single(storage: Storage) -> ContextLedger:
            application = open_application(storage, create=create, master_key=key)
            with closed_on_failure(application):
                ledger: ContextLedger = cls(application, create=create, **settings)
                if create:  # a reader (create=False) may not write
                    ledger._settle_erasures()
            return ledger

        ledger = single(storage)
        if storage.kind == "postgres":  # a shard directory there routes each user
            from ledger._sharded import sharded_if_directory  # noqa: PLC0415 - cycle

            ledger = sharded_if_directory(
                ledger, resolved, lambda shard_url: single(storage_for(shard_url))
            )
        return cast(Self, ledger)

    # Commands.

    @tracing.traced("open_context")
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
        connection: psycopg.Connection[Any]
        | psycopg.AsyncConnection[Any]
        | None = None,
    ) -> Context:
        """The thread's active context, reused; a new one if it has none.

        A ``request_id`` already applied for this user returns the first call's
        result and appends nothing (as do those of the other commands). A call
        that appended nothing (a refusal) leaves no trace: its repeat runs anew.

        ``connection`` (PostgreSQL, on every command): the caller's open psycopg
        connection to the ledger's database. The events are appended in the
        caller's transaction and commit or roll back with it; the ledger does not
        commit. Refused (InvalidContextInput, LedgerConfigError) in autocommit
        mode outside a transaction block, in a failed transaction, to another
        database, and on SQLite.
        """
        user = validation.identifier("user_id", user_id)
        thread = validation.identifier("thread_id", thread_id)
        run = validation.optional_identifier("run_id", run_id)
        patch = validation.metadata(metadata)
        ttl = validation.ttl_seconds(ttl_seconds)
        request = validation.optional_identifier("request_id", request_id)

        opened, evicted = self._commands.run(
            user,
            lambda aggregate: self._open_in(aggregate, thread, run, patch, ttl),
            request_id=request,
            connection=connection,
            repeat=lambda first: (
                context_of(first, ("created", "reused"), thread=thread),
                0,  # counted by the first call
            ),
        )
        metrics.count_evictions(evicted)
        return detached(opened)

    def _open_in(
        self,
        aggregate: UserContexts,
        thread: str,
        run: str | None,
        patch: dict[str, Any],
        ttl: float | None,
    ) -> tuple[Context, int]:
        """Opens the thread's context in the user's aggregate: the context, and
        how many contexts it evicted to make room."""
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

    @tracing.traced("update_context")
    @metrics.metered("update_context")
    def update_context(
        self,
        user_id: str,
        context_id: str,
        *,
        run_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        request_id: str | None = None,
        connection: psycopg.Connection[Any]
        | psycopg.AsyncConnection[Any]
        | None = None,
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
            connection=connection,
            repeat=lambda first: context_of(first, ("updated",), context_id=context),
        )
        return detached(updated)

    @tracing.traced("clear_context")
    @metrics.metered("clear_context")
    def clear_context(
        self,
        user_id: str,
        context_id: str,
        *,
        reason: str = "cleared",
        request_id: str | None = None,
        connection: psycopg.Connection[Any]
        | psycopg.AsyncConnection[Any]
        | None = None,
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
            connection=connection,
            repeat=lambda first: ended(first, context_id=context),
        )

    @tracing.traced("clear_user")
    @metrics.metered("clear_user")
    def clear_user(
        self,
        user_id: str,
        *,
        reason: str = "cleared",
        request_id: str | None = None,
        connection: psycopg.Connection[Any]
        | psycopg.AsyncConnection[Any]
        | None = None,
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
            connection=connection,
            repeat=ended,
        )
        return cleared

    @tracing.traced("expire_due")
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
        held: list[ConcurrencyConflict] = []
        for user in users:
            try:
                expired += self._commands.run(
                    user, lambda aggregate: aggregate.expire_due(self._now())
                )
            except LedgerCorrupted as corrupted:
                damaged[user_aggregate_id(user)] = corrupted
            except ConcurrencyConflict as conflict:  # held by a transaction
                held.append(conflict)
            except (LedgerError, PersistenceError) as error:
                if refusal_of(error):  # moved to another shard, which expires it
                    continue
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
        _raise_held("expire_due", f"recorded {expired} expiries", held)
        return expired

    @tracing.traced("forget_user")
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

    @tracing.traced("forget_inactive")
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
        held: list[ConcurrencyConflict] = []
        for user in self._erasure.inactive_users(since):
            try:
                appended, erased = self._forget(user, why, inactive_since=since)
            except LedgerCorrupted as corrupted:  # its keys are destroyed anyway
                damaged.append(corrupted)
                continue
            except ConcurrencyConflict as conflict:  # held by a transaction
                held.append(conflict)
                continue
            except LedgerError as error:
                if refusal_of(error):  # moved to another shard, which forgets it
                    continue
                raise
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
        _raise_held("forget_inactive", f"forgot {len(forgotten)} user(s)", held)
        return forgotten

    def _forget(
        self, user: str, why: str, *, inactive_since: datetime | None
    ) -> tuple[bool, int]:
        """Appends the user's ``forgotten`` event (if there is anything to forget,
        and the user is still inactive), then destroys the retired keys: whether it
        appended, and how many events were erased."""
        try:
            appended, generation, forgotten = self._commands.run(
                user, lambda aggregate: self._forget_in(aggregate, why, inactive_since)
            )
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

    def _forget_in(
        self, aggregate: UserContexts, why: str, inactive_since: datetime | None
    ) -> tuple[bool, int, bool]:
        """Appends the ``forgotten`` event (marking the erasure first): whether it
        appended, the retired key generation, and whether the user stands
        forgotten."""
        appended = aggregate.forget(
            reason=why, now=self._now(), inactive_since=inactive_since
        )
        if appended:  # marked before the append: an interruption is found
            self._erasure.begin(
                aggregate.user_id, aggregate.key_generation, aggregate.version
            )
        forgotten = aggregate.version == aggregate.forgotten_at
        return appended, aggregate.key_generation, forgotten

    @tracing.traced("inactive_users")
    def inactive_users(self, inactive_since: datetime) -> list[str]:
        """The users ``forget_inactive(inactive_since)`` would forget: whose last
        event is before it and is not their erasure."""
        since = validation.aware_time("inactive_since", inactive_since)
        users: list[str] = self._erasure.inactive_users(since)
        return users

    def _settle_erasures(self) -> dict[str, int]:
        """Finishes the erasures that were cut short (see ``ledger._store.erasure``)."""
        return self._erasure.settle()

    def _before_close(self) -> None:
        # Its feeds end (reads under way finish first), then the connections close.
        self._feeds.close()


def _raise_held(sweep: str, done: str, held: list[ConcurrencyConflict]) -> None:
    """After a sweep over users: the first user that other transactions held
    (an application's transaction left open), noting the others; the sweep went
    on past them."""
    if not held:
        return
    first = held[0]
    first.add_note(
        f"{sweep} {done} of other users; {len(held)} user(s) were held by other "
        "transactions and skipped, run it again to take them: "
        + ", ".join(sorted(conflict.user_id for conflict in held)[:10])
    )
    raise first
