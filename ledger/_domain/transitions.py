"""How an event changes a context, on models or on their fields, and when a
context expires: pure functions, the one rule every reader folds with."""

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, cast

from ledger._domain.events import (
    EVENT_CLASSES,
    ContextCleared,
    ContextEvent,
    ContextExpired,
    from_ledger_event,
)
from ledger._domain.models import EVICTED, Context, EventKind, LedgerEvent
from ledger._domain.streams import user_aggregate_id


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


def least_recently_used(contexts: Iterable[Context]) -> list[Context]:
    """The contexts, least recently used first (ties: oldest, then by id)."""
    return sorted(contexts, key=lambda c: (c.last_used_at, c.created_at, c.context_id))


ENDING: tuple[type[ContextEvent], ...] = (ContextExpired, ContextCleared)
"""The events after which a context is no longer active."""


ENDING_KINDS = frozenset(cls.KIND for cls in ENDING)
_EVENT_NAMES: dict[str, str] = {cls.KIND: cls.__name__ for cls in EVENT_CLASSES}


class Change(Protocol):
    """What ``evolve_context`` reads of an event: a domain event, or the record
    the read side decodes without pydantic (``ledger._store.records``)."""

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
    (``ledger._store.records``). The events were validated when written, so the
    values are not validated again.
    """
    kind = event.KIND
    if kind == "forgotten":
        return None
    if kind == "created":
        return _created(event)
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
    return _used(context, event, reused=kind == "reused")


def _created(event: Change) -> ContextFields:
    """The fields of the context a ``created`` event starts."""
    at = event.timestamp
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


def _used(context: ContextFields, event: Change, *, reused: bool) -> ContextFields:
    """The fields of a context after a ``reused`` or ``updated`` event."""
    at = event.timestamp
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
