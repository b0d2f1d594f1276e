"""A user's history as the report's bars: each context from its creation to its
end, with its reuses and updates. When a context ends is the domain's answer
(``contexts_through``)."""

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from ledger import Context, LedgerEvent
from ledger._domain.transitions import contexts_through

PENDING = "expired (not yet recorded)"


@dataclass
class Bar:
    """One context as its lane draws it: from its creation to its end."""

    context_id: str
    thread_id: str
    run_id: str | None
    start: datetime
    end: datetime
    ending: str = "open"
    reuses: list[datetime] = field(default_factory=list)
    updates: list[datetime] = field(default_factory=list)


def bars_of(events: Iterable[LedgerEvent], now: datetime) -> tuple[list[Bar], str]:
    """The contexts of a history, in order of creation, each with its end; and why
    the bars stop early ("" when they do not): a changed history may not replay.

    An expiry ends a bar when the time to live ran out, not when it was recorded;
    an open context whose time has run out by ``now`` ends there, else at ``now``.
    """
    bars: dict[str, Bar] = {}
    last: dict[str, Context | None] = {}
    steps = contexts_through(events)
    problem = ""
    while True:
        try:
            event, context = next(steps)
        except StopIteration:
            break
        except ValueError as error:  # the chain check in the header says where
            problem = str(error)
            break
        _record(bars, event)
        last[event.context_id] = context
    for bar in bars.values():
        if bar.ending == "open":
            _end_open(bar, last[bar.context_id], now)
    return list(bars.values()), problem


def _record(bars: dict[str, Bar], event: LedgerEvent) -> None:
    """Draws ``event`` on its context's bar (a new bar for a new context)."""
    at = event.occurred_at
    bar = bars.setdefault(
        event.context_id,
        Bar(event.context_id, event.thread_id, event.run_id, at, at),
    )
    bar.run_id = event.run_id
    if event.kind == "reused":
        bar.reuses.append(at)
    elif event.kind == "updated":
        bar.updates.append(at)
    elif event.kind in ("cleared", "expired"):
        bar.end, bar.ending = _ended_at(event), event.kind


def _end_open(bar: Bar, context: Context | None, now: datetime) -> None:
    """Ends a bar whose context no event ended: when its time ran out, if it has
    by ``now``, else at ``now``."""
    if context is not None and context.expires_at and context.is_due(now):
        bar.end, bar.ending = context.expires_at, PENDING
    else:
        bar.end = now


def _ended_at(event: LedgerEvent) -> datetime:
    at = event.details.get("expires_at") if event.kind == "expired" else None
    return datetime.fromisoformat(at) if isinstance(at, str) else event.occurred_at
