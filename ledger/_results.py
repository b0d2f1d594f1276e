"""What commands return: a context the caller may change, and what a repeated
request id returns (the first call's result, or a refusal when it was another
kind of call)."""

from typing import Any

from ledger._domain.models import Context
from ledger._store.commands import FirstCall
from ledger.errors import InvalidContextInput


def detached(context: Context) -> Context:
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


def context_of(
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


def ended(first: FirstCall, context_id: str | None = None) -> int:
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
