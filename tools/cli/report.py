"""A user's history as one self-contained HTML page: a timeline and an events table.

No script and no external resource: the page is HTML with inline CSS and SVG, so
it opens offline and in an archive years later. Every value from the ledger is
escaped. Each context is one bar, from its creation to its expiry (the time its
time to live ran out) or its clear; a context still open runs to the report's
time, or to its expiry if that has passed. Reuses are ticks on the bar, updates
dots. Thread and run are written beside the bar and shown on hover.
"""

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html import escape

from ledger import LedgerEvent
from ledger.domain.contexts import expiry_time

CHART_LEFT = 260
CHART_WIDTH = 900
ROW_HEIGHT = 26
BAR_HEIGHT = 14
TOP = 30
MIN_BAR = 2.0
AXIS_TICKS = 6


@dataclass
class Span:
    """One context as the timeline draws it."""

    context_id: str
    thread_id: str
    run_id: str | None
    start: datetime
    end: datetime | None = None
    ending: str = "open"
    expires_at: datetime | None = None
    ttl_seconds: float | None = None
    reuses: list[datetime] = field(default_factory=list)
    updates: list[datetime] = field(default_factory=list)


def spans_of(events: list[LedgerEvent], now: datetime) -> list[Span]:
    """The contexts in ``events``, in order of creation, each with its end."""
    spans: dict[str, Span] = {}
    for event in events:
        span = spans.get(event.context_id)
        if event.kind == "created" or span is None:
            span = spans[event.context_id] = Span(
                event.context_id, event.thread_id, event.run_id, event.occurred_at
            )
        span.run_id = event.run_id
        if event.kind == "reused":
            span.reuses.append(event.occurred_at)
        elif event.kind == "updated":
            span.updates.append(event.occurred_at)
        elif event.kind == "expired":
            at = event.details.get("expires_at")
            span.end = datetime.fromisoformat(at) if isinstance(at, str) else None
            span.end = span.end or event.occurred_at
            span.ending = "expired"
        elif event.kind == "cleared":
            span.end, span.ending = event.occurred_at, "cleared"
        if event.kind in ("created", "reused", "updated"):
            # As the ledger computes it (each of these counts as a use).
            ttl = event.details.get("ttl_seconds", span.ttl_seconds)
            span.ttl_seconds = ttl if isinstance(ttl, int | float) else None
            span.expires_at = expiry_time(event.occurred_at, span.ttl_seconds)
    for span in spans.values():
        if span.end is None:
            due = span.expires_at is not None and span.expires_at <= now
            span.end = span.expires_at if due else now
            span.ending = "expired (not yet recorded)" if due else "open"
    return list(spans.values())


def render_report(user_id: str, events: list[LedgerEvent], now: datetime) -> str:
    """The page for ``user_id``'s ``events`` (oldest first), made at ``now``."""
    now = now.astimezone(UTC)
    spans = spans_of(events, now)
    return _PAGE.format(
        user=escape(user_id),
        summary=escape(_summary(events, spans, now)),
        timeline=_timeline(spans) if spans else '<p id="empty">No contexts.</p>',
        rows="\n".join(_row(event) for event in events),
    )


def _summary(events: list[LedgerEvent], spans: list[Span], now: datetime) -> str:
    if not events:
        return f"No events. Report made at {_t(now)} UTC."
    return (
        f"{len(events)} event(s), {len(spans)} context(s), from "
        f"{_t(events[0].occurred_at)} to {_t(events[-1].occurred_at)} UTC. "
        f"Report made at {_t(now)} UTC."
    )


def _timeline(spans: list[Span]) -> str:
    first = min(span.start for span in spans)
    last = max(span.end or span.start for span in spans)
    seconds = max((last - first).total_seconds(), 1.0)

    def x(at: datetime) -> float:
        return CHART_LEFT + (at - first).total_seconds() / seconds * CHART_WIDTH

    height = TOP + ROW_HEIGHT * len(spans) + 10
    parts = [
        f'<svg id="chart" xmlns="http://www.w3.org/2000/svg" '
        f'width="{CHART_LEFT + CHART_WIDTH + 90}" height="{height}">'
    ]
    for index in range(AXIS_TICKS + 1):
        at = first + timedelta(seconds=seconds * index / AXIS_TICKS)
        left = x(at)
        parts.append(
            f'<line class="grid" x1="{left:.1f}" y1="{TOP - 6}" x2="{left:.1f}" '
            f'y2="{height - 10}"/><text class="axis" x="{left:.1f}" y="{TOP - 12}" '
            f'text-anchor="middle">{_t(at)}</text>'
        )
    for row, span in enumerate(spans):
        top = TOP + row * ROW_HEIGHT + (ROW_HEIGHT - BAR_HEIGHT) / 2
        start = x(span.start)
        width = max(x(span.end or span.start) - start, MIN_BAR)
        label = span.thread_id + (f" · {span.run_id}" if span.run_id else "")
        tip = (
            f"thread {span.thread_id}\nrun {span.run_id or '-'}\n"
            f"context {span.context_id}\ncreated {_t(span.start)} UTC\n"
            f"{span.ending} {_t(span.end)} UTC\nreuses {len(span.reuses)}"
        )
        ticks = "".join(
            f'<line class="tick" x1="{x(at):.1f}" y1="{top - 3:.1f}" '
            f'x2="{x(at):.1f}" y2="{top + BAR_HEIGHT + 3:.1f}"/>'
            for at in span.reuses
        )
        dots = "".join(
            f'<circle class="update" cx="{x(at):.1f}" '
            f'cy="{top + BAR_HEIGHT / 2:.1f}" r="3"/>'
            for at in span.updates
        )
        parts.append(
            f'<g class="context" data-context="{escape(span.context_id)}" '
            f'data-thread="{escape(span.thread_id)}" '
            f'data-run="{escape(span.run_id or "")}" '
            f'data-ending="{escape(span.ending)}" data-reuses="{len(span.reuses)}">'
            f"<title>{escape(tip)}</title>"
            f'<text class="label" x="{CHART_LEFT - 8}" y="{top + BAR_HEIGHT - 3:.1f}" '
            f'text-anchor="end">{escape(_cut(label))}</text>'
            f'<rect class="bar {_css(span.ending)}" x="{start:.1f}" y="{top:.1f}" '
            f'width="{width:.1f}" height="{BAR_HEIGHT}" rx="3"/>{ticks}{dots}</g>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _row(event: LedgerEvent) -> str:
    cells = (
        str(event.version),
        _t(event.occurred_at),
        event.kind,
        event.thread_id,
        event.context_id,
        event.run_id or "",
        json.dumps(event.details, ensure_ascii=False, sort_keys=True),
    )
    body = "".join(f"<td>{escape(cell)}</td>" for cell in cells)
    return f'<tr class="{event.kind}" data-version="{event.version}">{body}</tr>'


def _t(at: datetime | None) -> str:
    return "" if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _cut(text: str, limit: int = 36) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _css(ending: str) -> str:
    return ending.split(" ", 1)[0]


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>ctxledger: contexts of {user}</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 24px; color: #222; }}
h1 {{ font-size: 20px; }}
.legend span {{ display: inline-block; margin-right: 16px; }}
.legend i {{ display: inline-block; width: 14px; height: 10px; margin-right: 4px; }}
.bar.open, .legend .open {{ fill: #3a7bd5; background: #3a7bd5; }}
.bar.cleared, .legend .cleared {{ fill: #8a8f98; background: #8a8f98; }}
.bar.expired, .legend .expired {{ fill: #d58a3a; background: #d58a3a; }}
.tick {{ stroke: #111; stroke-width: 2; }}
.update {{ fill: #fff; stroke: #111; }}
.grid {{ stroke: #e3e3e3; }}
.axis {{ font-size: 11px; fill: #666; }}
.label {{ font-size: 12px; }}
.context:hover .bar {{ stroke: #111; }}
table {{ border-collapse: collapse; margin-top: 12px; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: left;
  font-size: 12px; vertical-align: top; }}
td:last-child {{ font-family: monospace; }}
</style>
</head>
<body>
<h1>Contexts of <span id="user">{user}</span></h1>
<p id="summary">{summary}</p>
<p class="legend"><span><i class="open"></i>open</span><span><i class="cleared"></i>
cleared</span><span><i class="expired"></i>expired</span><span>| tick: reuse</span>
<span>○ update</span></p>
<section id="timeline">{timeline}</section>
<h2>Events</h2>
<table id="events">
<thead><tr><th>version</th><th>at (UTC)</th><th>kind</th><th>thread</th>
<th>context</th><th>run</th><th>details</th></tr></thead>
<tbody>
{rows}
</tbody>
</table>
</body>
</html>
"""
