"""The per-user aggregate: a user's active contexts, changed only by events."""

from collections import OrderedDict
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from secrets import token_hex
from typing import Any, ClassVar, Protocol, Self, cast
from uuid import UUID, uuid4, uuid5

from pydantic import BaseModel, ConfigDict, Field

from ledger.domain.events import (
    EVENT_CLASSES,
    CarriesMetadata,
    ContextCleared,
    ContextCreated,
    ContextEvent,
    ContextExpired,
    ContextReused,
    ContextUpdated,
    UserForgotten,
    from_ledger_event,
)
from ledger.domain.hashing import (
    GENESIS_HASH,
    SALT_BYTES,
    metadata_commitment,
    record_hash,
)
from ledger.domain.models import (
    EVICTED,
    Context,
    EventKind,
    LedgerEvent,
    OnLimit,
    UtcDatetime,
)
from ledger.domain.validation import check_merged_size
from ledger.errors import ContextLimitExceeded, ContextNotFound

REQUEST_WINDOW = 1000
"""How many of a user's latest request ids are remembered (a repeat is not applied)."""
_USER_NAMESPACE = UUID("6f1d4c2e-8a57-4f0b-9c1e-3b2a7d9e5c40")


@lru_cache(maxsize=65536)
def user_aggregate_id(user_id: str) -> UUID:
    """The stream id of a user: the same in every process, so writers contend."""
    return uuid5(_USER_NAMESPACE, user_id)


def merge_metadata(current: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """Shallow merge; a key given as None is removed."""
    merged = {**current, **patch}
    return {key: value for key, value in merged.items() if value is not None}


LAST_TIME = datetime.max.replace(tzinfo=UTC)
"""The latest time a datetime holds: an expiry later than it is kept as it."""


def expiry_time(last_used_at: datetime, ttl_seconds: float | None) -> datetime | None:
    """When a context used at ``last_used_at`` expires; None for no expiry. An
    expiry past the end of the year 9999 is LAST_TIME."""
    if ttl_seconds is None:
        return None
    ttl = timedelta(seconds=ttl_seconds)
    return LAST_TIME if LAST_TIME - last_used_at <= ttl else last_used_at + ttl


class UserSnapshot(BaseModel):
    """The state of a user's aggregate at one version, so loading skips replay."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    TOPIC: ClassVar[str] = "ctxledger:UserSnapshot"

    originator_id: UUID
    originator_version: int
    timestamp: UtcDatetime
    user_id: str
    created_on: UtcDatetime
    modified_on: UtcDatetime
    last_hash: str
    contexts: list[Context]
    requests: list[tuple[str, int, int]] = Field(default_factory=list)
    """The request window: (request id, first version, last version), oldest first."""
    key_generation: int = 0
    """The data key that seals the contexts' metadata (and new events')."""
    forgotten_at: int = 0
    """The version of the user's last ``forgotten`` event (0: none)."""

    @classmethod
    def take(cls, aggregate: "UserContexts") -> Self:
        """The snapshot of an aggregate just saved (see LedgerApplication.record)."""
        return cls(
            originator_id=aggregate.id,
            originator_version=aggregate.version,
            timestamp=aggregate.modified_on,
            user_id=aggregate.user_id,
            created_on=aggregate.created_on,
            modified_on=aggregate.modified_on,
            last_hash=aggregate.last_hash,
            contexts=list(aggregate.contexts.values()),
            requests=[(rid, *versions) for rid, versions in aggregate.requests.items()],
            key_generation=aggregate.key_generation,
            forgotten_at=aggregate.forgotten_at,
        )


class UserContexts:
    """One user's active contexts. Ended contexts leave the state, so it stays small."""

    def __init__(self, aggregate_id: UUID, user_id: str, created_on: datetime) -> None:
        self._id = aggregate_id
        self.version = 0
        self.user_id = user_id
        self.created_on = created_on
        self.modified_on = created_on
        self.last_hash = GENESIS_HASH
        self.contexts: dict[str, Context] = {}
        self._threads: dict[str, str] = {}
        self._pending: list[ContextEvent] = []
        self.requests: OrderedDict[str, tuple[int, int]] = OrderedDict()
        """The last REQUEST_WINDOW request ids: the first and last versions of the
        events of each."""
        self._call: dict[str, Any] = {}
        self.key_generation = 0
        """The data key new events seal their metadata with: one more after each
        ``forgotten`` event, so nothing new is ever sealed under a destroyed key."""
        self.forgotten_at = 0

    @classmethod
    def start(cls, user_id: str, now: datetime) -> Self:
        """The empty aggregate of a user who has no events yet."""
        return cls(user_aggregate_id(user_id), user_id, now)

    @classmethod
    def from_snapshot(cls, snapshot: UserSnapshot) -> Self:
        aggregate = cls(snapshot.originator_id, snapshot.user_id, snapshot.created_on)
        aggregate.version = snapshot.originator_version
        aggregate.modified_on = snapshot.modified_on
        aggregate.last_hash = snapshot.last_hash
        aggregate.key_generation = snapshot.key_generation
        aggregate.forgotten_at = snapshot.forgotten_at
        for context in snapshot.contexts:
            aggregate._put(context)
        for request_id, first, last in snapshot.requests:
            aggregate.requests[request_id] = (first, last)
        return aggregate

    @property
    def id(self) -> UUID:
        return self._id

    def copy(self) -> Self:
        """An independent aggregate: contexts are frozen and replaced, never changed
        in place, so copying the maps is enough."""
        copy = type(self).__new__(type(self))
        copy.__dict__.update(self.__dict__)
        copy.contexts = dict(self.contexts)
        copy._threads = dict(self._threads)
        copy._pending = list(self._pending)
        copy.requests = OrderedDict(self.requests)
        return copy

    def attribute_to(self, command_id: str, request_id: str | None) -> None:
        """Stamps the events triggered from now on with the call's ids."""
        self._call = {"command_id": command_id, "request_id": request_id}

    @property
    def pending(self) -> list[ContextEvent]:
        """Events triggered since the aggregate was loaded, not yet saved."""
        return list(self._pending)

    def collect_events(self) -> list[ContextEvent]:
        """Hands the new events over for storing and forgets them."""
        events, self._pending = self._pending, []
        self._call = {}  # the next call stamps its own ids
        return events

    # Queries.

    def for_thread(self, thread_id: str) -> Context | None:
        context_id = self._threads.get(thread_id)
        return None if context_id is None else self.contexts[context_id]

    def owned(self, context_id: str) -> Context:
        """The user's active context with this id; any other id is simply not found."""
        try:
            return self.contexts[context_id]
        except KeyError:
            raise ContextNotFound(self.user_id, context_id) from None

    def live(self, now: datetime) -> list[Context]:
        return [c for c in self.contexts.values() if not c.is_due(now)]

    def time_of(self, now: datetime) -> datetime:
        """The time a command given the clock's ``now`` decides with and stamps its
        events with: never before the user's last event, so a host whose clock is
        behind neither writes times that go backwards nor revives a context whose
        time to live ran out by the stream's time. Queries decide with it too."""
        return max(now, self.modified_on) if self.version else now

    # Commands: each decides, then triggers events that change the state.

    def open(
        self,
        thread_id: str,
        *,
        run_id: str | None,
        metadata: dict[str, Any],
        ttl_seconds: float | None,
        default_ttl_seconds: float | None,
        now: datetime,
        limit: int,
        on_limit: OnLimit = "refuse",
    ) -> Context:
        """Reuses the thread's live context, else creates one (within ``limit``).

        At the limit, ``on_limit="refuse"`` raises ContextLimitExceeded and
        ``"evict"`` first clears the least recently used live contexts (reason
        EVICTED), as many as it takes to make room. Contexts past their time to
        live are recorded expired either way, and never evicted."""
        now = self.time_of(now)
        current = self.for_thread(thread_id)
        if current is not None and not current.is_due(now):
            return self._reuse(current, run_id, metadata, ttl_seconds, now)
        live = self.live(now)
        excess = len(live) - limit + 1  # how many must go to make room
        if excess > 0 and on_limit != "evict":
            raise ContextLimitExceeded(self.user_id, limit)
        self.expire_due(now)
        for evicted in least_recently_used(live)[: max(excess, 0)]:
            self._end(ContextCleared, evicted, now, reason=EVICTED)
        context_id = str(uuid4())
        self._trigger(
            ContextCreated,
            now,
            context_id=context_id,
            thread_id=thread_id,
            run_id=run_id,
            metadata=merge_metadata({}, metadata),
            ttl_seconds=ttl_seconds if ttl_seconds is not None else default_ttl_seconds,
        )
        return self.contexts[context_id]

    def _reuse(
        self,
        context: Context,
        run_id: str | None,
        metadata: dict[str, Any],
        ttl_seconds: float | None,
        now: datetime,
    ) -> Context:
        check_merged_size(merge_metadata(context.metadata, metadata), metadata)
        self._trigger(
            ContextReused,
            now,
            context_id=context.context_id,
            thread_id=context.thread_id,
            run_id=run_id if run_id is not None else context.run_id,
            metadata=metadata,
            ttl_seconds=ttl_seconds if ttl_seconds is not None else context.ttl_seconds,
            reuse_count=context.reuse_count + 1,
        )
        return self.contexts[context.context_id]

    def update(
        self,
        context_id: str,
        *,
        run_id: str | None,
        metadata: dict[str, Any],
        now: datetime,
    ) -> Context:
        now = self.time_of(now)
        context = self.owned(context_id)
        if context.is_due(now):
            raise ContextNotFound(self.user_id, context_id)
        check_merged_size(merge_metadata(context.metadata, metadata), metadata)
        self._trigger(
            ContextUpdated,
            now,
            context_id=context_id,
            thread_id=context.thread_id,
            run_id=run_id if run_id is not None else context.run_id,
            metadata=metadata,
        )
        return self.contexts[context_id]

    def clear(self, context_id: str, *, reason: str, now: datetime) -> None:
        now = self.time_of(now)
        context = self.owned(context_id)
        if context.is_due(now):
            self._expire(context, now)
        else:
            self._end(ContextCleared, context, now, reason=reason)

    def clear_all(self, *, reason: str, now: datetime) -> int:
        """Clears every live context (due ones expire instead); returns how many."""
        now = self.time_of(now)
        self.expire_due(now)
        cleared = list(self.contexts.values())
        for context in cleared:
            self._end(ContextCleared, context, now, reason=reason)
        return len(cleared)

    def expire_due(self, now: datetime) -> int:
        now = self.time_of(now)
        due = [c for c in self.contexts.values() if c.is_due(now)]
        for context in due:
            self._expire(context, now)
        return len(due)

    def forget(
        self, *, reason: str, now: datetime, inactive_since: datetime | None = None
    ) -> bool:
        """Erases the user's personal data: ends every context and retires the data
        key (the store destroys it). Nothing to do, and False, for a user with no
        event since the last erasure, and with ``inactive_since``, for a user
        whose last event is not before it (active again since it was listed)."""
        now = self.time_of(now)
        if self.version == self.forgotten_at:
            return False
        if inactive_since is not None and self.modified_on >= inactive_since:
            return False
        self._trigger(
            UserForgotten,
            now,
            context_id="",
            thread_id="",
            run_id=None,
            reason=reason,
        )
        return True

    def _expire(self, context: Context, now: datetime) -> None:
        self._end(
            ContextExpired, context, now, reason="ttl", expires_at=context.expires_at
        )

    def _end(
        self, cls: type[ContextEvent], context: Context, now: datetime, **fields: Any
    ) -> None:
        self._trigger(
            cls,
            now,
            context_id=context.context_id,
            thread_id=context.thread_id,
            run_id=context.run_id,
            **fields,
        )

    def _trigger(self, cls: type[ContextEvent], now: datetime, **fields: Any) -> None:
        # Every value here is validated already (by the API or from the state), so
        # the event is built without validating it again.
        if issubclass(cls, CarriesMetadata):
            salt = token_hex(SALT_BYTES)
            fields["metadata_salt"] = salt
            fields["metadata_commitment"] = metadata_commitment(
                salt, fields["metadata"]
            )
        event = cls.model_construct(
            originator_id=self.id,
            originator_version=self.version + 1,
            timestamp=now,  # every command takes it from time_of
            user_id=self.user_id,
            prev_hash=self.last_hash,
            key_generation=self.key_generation,
            **self._call,
            **fields,
        )
        self.apply(event)
        self._pending.append(event)

    # Evolution: the only code that changes the state.

    def apply(self, event: ContextEvent) -> None:
        if event.originator_version != self.version + 1:
            msg = (
                f"event version {event.originator_version} of user {self.user_id!r} "
                f"does not follow version {self.version}"
            )
            raise ValueError(msg)
        if (
            isinstance(event, UserForgotten)
            or (
                isinstance(event, CarriesMetadata)
                and event.metadata_commitment is not None
            )
        ) and event.key_generation != self.key_generation:
            msg = (
                f"event version {event.originator_version} of user {self.user_id!r} "
                f"names key generation {event.key_generation}, but the stream is at "
                f"generation {self.key_generation}"
            )
            raise ValueError(msg)
        if isinstance(event, UserForgotten):
            self.contexts.clear()
            self._threads.clear()
            self.key_generation = event.key_generation + 1
            self.forgotten_at = event.originator_version
        else:
            self._evolve(event)
        if event.request_id is not None:
            self._remember(event.request_id, event.originator_version)
        self.version = event.originator_version
        self.modified_on = event.timestamp
        self.last_hash = record_hash(event.chain_record())

    def _remember(self, request_id: str, version: int) -> None:
        remember_request(self.requests, request_id, version)

    def _evolve(self, event: ContextEvent) -> None:
        current = self.contexts.get(event.context_id)
        if current is not None and current.thread_id != event.thread_id:
            msg = (
                f"event version {event.originator_version} of context "
                f"{event.context_id!r} names thread {event.thread_id!r}, but the "
                f"context belongs to thread {current.thread_id!r}"
            )
            raise ValueError(msg)
        context = evolve_context(current, event)
        if context is None:
            if self._threads.get(event.thread_id) == event.context_id:
                del self._threads[event.thread_id]
            del self.contexts[event.context_id]
        else:
            self._put(context)

    def _put(self, context: Context) -> None:
        self.contexts[context.context_id] = context
        self._threads[context.thread_id] = context.context_id


def remember_request(
    requests: "OrderedDict[str, tuple[int, int]]", request_id: str, version: int
) -> None:
    """Notes that the event at ``version`` was written for ``request_id``: the
    request window of the last REQUEST_WINDOW request ids, with the first and last
    versions of each (the aggregate's, and the fold verification checks a
    snapshot against)."""
    known = requests.get(request_id)
    first = known[0] if known is not None and known[1] == version - 1 else version
    requests[request_id] = (first, version)
    requests.move_to_end(request_id)
    if len(requests) > REQUEST_WINDOW:
        requests.popitem(last=False)


def least_recently_used(contexts: Iterable[Context]) -> list[Context]:
    """The contexts, least recently used first (ties: oldest, then by id)."""
    return sorted(contexts, key=lambda c: (c.last_used_at, c.created_at, c.context_id))


ENDING: tuple[type[ContextEvent], ...] = (ContextExpired, ContextCleared)
"""The events after which a context is no longer active."""


ENDING_KINDS = frozenset(cls.KIND for cls in ENDING)
_EVENT_NAMES: dict[str, str] = {cls.KIND: cls.__name__ for cls in EVENT_CLASSES}


class Change(Protocol):
    """What ``evolve_context`` reads of an event: a domain event, or the record
    the read side decodes without pydantic (``ledger.store.records``)."""

    @property
    def KIND(self) -> EventKind: ...  # noqa: N802  (the events' class attribute)
    @property
    def timestamp(self) -> datetime: ...
    @property
    def user_id(self) -> str: ...
    @property
    def context_id(self) -> str: ...
    @property
    def thread_id(self) -> str: ...
    @property
    def run_id(self) -> str | None: ...


def opens_context(event: Change) -> bool:
    """Whether ``event`` starts a new context (``evolve_context``'s first rule)."""
    return event.KIND == "created"


def forgets_user(event: Change) -> bool:
    """Whether ``event`` erased the user: it ends every context of the user."""
    return event.KIND == "forgotten"


def evicts_context(event: Change) -> bool:
    """Whether ``event`` is the ledger's eviction of a context (a ``cleared``
    event with the reserved reason EVICTED)."""
    return event.KIND == "cleared" and getattr(event, "reason", None) == EVICTED


def ends_context(event: Change) -> bool:
    """Whether ``event`` ends its context (``evolve_context`` returns None)."""
    return event.KIND in ENDING_KINDS


ContextFields = dict[str, Any]
"""A context as its fields (``Context``'s), for the read side's fast paths."""


def evolve_context(context: Context | None, event: Change) -> Context | None:
    """The context after ``event``: None once it is expired or cleared.

    The aggregate, the expiry index and the report use it; the views use
    ``evolve_fields``, the same transition on a context's fields.
    """
    fields = evolve_fields(None if context is None else context.__dict__, event)
    return None if fields is None else Context.model_construct(**fields)


def evolve_fields(context: ContextFields | None, event: Change) -> ContextFields | None:
    """A context's fields after ``event`` (a new dict); None once it is expired or
    cleared.

    The one place that says how events change a context and when it expires, on
    domain events or on the records the read side decodes straight from storage
    (``ledger.store.records``). The events were validated when written, so the
    values are not validated again.
    """
    at = event.timestamp
    kind = event.KIND
    if kind == "forgotten":
        return None
    if kind == "created":
        metadata = cast(dict[str, Any] | None, getattr(event, "metadata"))  # noqa: B009
        ttl = cast(float | None, getattr(event, "ttl_seconds"))  # noqa: B009
        return {
            "context_id": event.context_id,
            "user_id": event.user_id,
            "thread_id": event.thread_id,
            "run_id": event.run_id,
            "metadata": dict(metadata) if metadata is not None else {},
            "created_at": at,
            "last_used_at": at,
            "expires_at": expiry_time(at, ttl),
            "ttl_seconds": ttl,
            "reuse_count": 0,
            "erased": metadata is None,
        }
    if context is None:
        msg = (
            f"{_EVENT_NAMES[event.KIND]} of context {event.context_id!r}, which is "
            "not active"
        )
        raise ValueError(msg)
    if kind in ENDING_KINDS:
        return None
    if kind not in ("reused", "updated"):
        msg = f"{_EVENT_NAMES[kind]} is not an event that changes a context"
        raise TypeError(msg)
    reused = kind == "reused"
    patch = cast(dict[str, Any] | None, getattr(event, "metadata"))  # noqa: B009
    ttl = (
        cast(float | None, getattr(event, "ttl_seconds"))  # noqa: B009
        if reused
        else context["ttl_seconds"]
    )
    erased = context["erased"] or patch is None
    return {
        **context,
        "run_id": event.run_id,
        "metadata": {}
        if erased or patch is None
        else merge_metadata(context["metadata"], patch),
        "erased": erased,
        "last_used_at": at,
        "expires_at": expiry_time(at, ttl),
        "ttl_seconds": ttl,
        "reuse_count": cast(int, getattr(event, "reuse_count"))  # noqa: B009
        if reused
        else context["reuse_count"],
    }


def contexts_through(
    events: Iterable[LedgerEvent],
) -> Iterator[tuple[LedgerEvent, Context | None]]:
    """Each event of a user's history with its context after it (None once ended),
    by ``evolve_context``: for readers of histories, such as the report."""
    contexts: dict[str, Context | None] = {}
    for event in events:
        if event.kind == "forgotten":
            for context_id in contexts:
                contexts[context_id] = None
            yield event, None
            continue
        domain_event = from_ledger_event(event, user_aggregate_id(event.user_id))
        context = evolve_context(contexts.get(event.context_id), domain_event)
        contexts[event.context_id] = context
        yield event, context


def project_user(
    aggregate: UserContexts | None, events: Iterable[ContextEvent | UserSnapshot]
) -> UserContexts | None:
    """Replays stored events (after an optional snapshot) into the aggregate."""
    for event in events:
        if isinstance(event, UserSnapshot):
            aggregate = UserContexts.from_snapshot(event)
            continue
        if aggregate is None:
            aggregate = UserContexts(
                event.originator_id, event.user_id, event.timestamp
            )
        aggregate.apply(event)
    return aggregate
