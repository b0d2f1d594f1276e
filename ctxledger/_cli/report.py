"""A user's history as one self-contained HTML page, made to be printed and filed.

No script and no external resource: HTML with inline CSS and SVG, so it opens
offline and in an archive years later. Every value from the ledger is escaped.
The header gives the user's continuity figures and the state of the hash chain.
The timeline has one lane per thread, its contexts as consecutive bars coloured
by how they ended. Reuses and updates are strips beside each bar, binned per few
pixels and shaded by count, so that hundreds stay readable and the bar's colour
stays visible. The bars themselves (when each context ends) are drawn from the
history by ``ctxledger._cli.report_bars``.
"""

import json
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from html import escape
from itertools import accumulate, pairwise

from ctxledger._cli.report_axis import nice_step, ticks
from ctxledger._cli.report_bars import PENDING, Bar, bars_of
from ledger import LedgerEvent, UserChain
from projections import ContinuityFigures

LEFT, WIDTH, RIGHT = 220, 960, 40  # label column, time axis, margin (px)
FULL = LEFT + WIDTH + RIGHT
TOP, ROW, BAR = 40, 42, 20  # px: axis, a lane's row, a bar
UPDATES, REUSES = 4, 8  # px: the strips of updates above a bar and reuses below
BIN = 3  # px of time axis per bin of reuses or updates
MARGIN = 0.04  # of the axis after the last event shown
SEALING = frozenset({"metadata_commitment", "metadata_salt"})
"""What the details column leaves out unless asked: the sealed metadata's
commitment and salt (64 hex digits each), which mean nothing to a reader."""
MONO = 6.7  # px per character of the 11 px monospace context ids
FIGURES = (
    ("created", "contexts created"),
    ("reused", "reuses"),
    ("updated", "updates"),
    ("cleared", "cleared"),
    ("evicted", "evicted to make room"),
    ("expired", "expired"),
    ("never_reused", "never reused"),
    ("reuses_per_created", "reuses per context"),
    ("threads_with_overlap", "threads with two contexts at once"),
)


def render_report(
    user_id: str,
    events: list[LedgerEvent],
    now: datetime,
    figures: ContinuityFigures,
    chain: UserChain,
    *,
    sealing: bool = False,
) -> str:
    """The page for ``user_id``'s ``events`` (oldest first), made at ``now``;
    the details show the metadata's commitment and salt only with ``sealing``."""
    now = now.astimezone(UTC)
    bars, problem = bars_of(events, now)
    return _PAGE.format(
        user=escape(user_id),
        summary=escape(_summary(events, bars, now)),
        figures=_figures(figures),
        chain=_chain(chain),
        timeline=(_timeline(bars) if bars else '<p id="empty">No contexts.</p>')
        + _stops(problem),
        rows="\n".join(_row(event, sealing) for event in events),
    )


def _stops(problem: str) -> str:
    if not problem:
        return ""
    return (
        '<p id="replay-stops">The timeline stops where the stored history no '
        f"longer replays: {escape(problem)}. The events table lists every stored "
        "event.</p>"
    )


def _summary(events: list[LedgerEvent], bars: list[Bar], now: datetime) -> str:
    made = f"Report made at {_t(now)} UTC."
    if not events:
        return f"No events. {made}"
    threads = _n(len({bar.thread_id for bar in bars}), "thread")
    return (
        f"{_n(len(events), 'event')}, {_n(len(bars), 'context')} in {threads}, "
        f"from {_t(events[0].occurred_at)} to {_t(events[-1].occurred_at)} UTC. {made}"
    )


def _figures(figures: ContinuityFigures) -> str:
    values = figures.model_dump()
    return "".join(
        f'<div data-figure="{name}"><dt>{label}</dt>'
        f"<dd>{_figure(values[name])}</dd></div>"
        for name, label in FIGURES
    )


def _figure(value: float | None) -> str:
    return (
        "-"
        if value is None
        else f"{value:.2f}"
        if isinstance(value, float)
        else str(value)
    )


def _chain(chain: UserChain) -> str:
    fault, state = chain.fault, "holds" if chain.holds else "broken"
    where = (
        f" at version {fault.version} ({fault.fault}: {fault.detail})" if fault else ""
    )
    return (
        f'<p id="chain" class="{state}">Hash chain <strong>{state}</strong>'
        f"{escape(where)}. Head version {chain.head_version}, head hash "
        f'<code id="head-hash">{escape(chain.head_hash)}</code></p>'
    )


@dataclass(frozen=True)
class Scale:
    """Where instants fall on the time axis, and the counts of the busiest bins."""

    first: datetime
    seconds: float
    peaks: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, bars: list[Bar]) -> "Scale":
        """The scale of the events shown: an open context runs on to the right
        edge rather than stretching the axis to the time of the report."""
        first = min(bar.start for bar in bars)
        last = max(_shown_until(bar) for bar in bars)
        span = max((last - first).total_seconds(), 1.0)
        scale = cls(first, span * (1 + MARGIN))
        return replace(
            scale,
            peaks={
                "reuse": max(scale.peak(bar.reuses) for bar in bars),
                "update": max(scale.peak(bar.updates) for bar in bars),
            },
        )

    @property
    def last(self) -> datetime:
        return self.first + timedelta(seconds=self.seconds)

    def x(self, at: datetime) -> float:
        seconds = min((at - self.first).total_seconds(), self.seconds)
        return LEFT + seconds / self.seconds * WIDTH

    def bins(self, times: list[datetime]) -> Counter[int]:
        return Counter(int((self.x(at) - LEFT) // BIN) for at in times)

    def peak(self, times: list[datetime]) -> int:
        return max(self.bins(times).values(), default=0)


def _shown_until(bar: Bar) -> datetime:
    """The last instant a bar shows: its end, unless it is still open (then its
    last event: an open bar runs on to the axis's right edge)."""
    ended = [bar.end] if bar.ending != "open" else []
    return max([bar.start, *bar.reuses, *bar.updates, *ended])


def _timeline(bars: list[Bar]) -> str:
    scale = Scale.of(bars)
    lanes = _lanes(bars)
    tops = list(accumulate((ROW * len(rows) for rows in lanes.values()), initial=TOP))
    step = nice_step(scale.seconds)
    instants = ticks(scale.first, scale.last, step)
    bands = (
        f'<rect class="band{i % 2}" x="0" y="{top}" width="{FULL}" '
        f'height="{below - top}"/>'
        for i, (top, below) in enumerate(pairwise(tops))
    )
    return (
        f'<svg id="chart" xmlns="http://www.w3.org/2000/svg" data-step="{step}" '
        f'viewBox="0 0 {FULL} {tops[-1] + 8}" width="{FULL}" height="{tops[-1] + 8}">'
        + "".join(bands)
        + "".join(_tick(at, step, scale, tops[-1], i) for i, at in enumerate(instants))
        + "".join(
            _lane(t, rows, top, scale)
            for (t, rows), top in zip(lanes.items(), tops, strict=False)
        )
        + "</svg>"
    )


def _lanes(bars: list[Bar]) -> dict[str, list[list[Bar]]]:
    """Per thread, rows of bars that do not overlap: one row unless the thread
    ever had two contexts at once, which the chart must show, not hide."""
    lanes: dict[str, list[list[Bar]]] = {}
    for bar in bars:
        rows = lanes.setdefault(bar.thread_id, [])
        row = next((row for row in rows if row[-1].end <= bar.start), None)
        if row is None:
            rows.append(row := [])
        row.append(bar)
    return lanes


def _tick(at: datetime, step: int, scale: Scale, bottom: int, index: int) -> str:
    """A grid line and its label; the date above the first tick of each day."""
    left = scale.x(at)
    label = at.strftime(
        "%Y-%m-%d" if step >= 86400 else "%H:%M" if step >= 60 else "%H:%M:%S"
    )
    new_day = step < 86400 and (index == 0 or at.time() == datetime.min.time())
    date = at.strftime("%Y-%m-%d") if new_day else ""
    return (
        f'<line class="grid" x1="{left:.1f}" y1="{TOP - 4}" x2="{left:.1f}" '
        f'y2="{bottom}"/><text class="date" x="{left:.1f}" y="{TOP - 22}">{date}'
        f'</text><text class="axis" data-at="{at.isoformat()}" x="{left:.1f}" '
        f'y="{TOP - 8}">{label}</text>'
    )


def _lane(thread: str, rows: list[list[Bar]], top: int, scale: Scale) -> str:
    bars = [bar for row in rows for bar in row]
    reuses = sum(len(bar.reuses) for bar in bars)
    parts = [
        f'<g class="lane" data-thread="{escape(thread)}"><text class="thread" x="8" '
        f'y="{top + 17}">{escape(_cut(thread))}</text><text class="counts" x="8" '
        f'y="{top + 32}">{_n(len(bars), "context")}, {_n(reuses, "reuse")}</text>'
    ]
    for number, row in enumerate(rows):
        rooms = [scale.x(bar.start) for bar in row[1:]] + [FULL]
        for bar, room in zip(row, rooms, strict=True):
            parts.append(_bar(bar, top + number * ROW + 4, scale, room))
    parts.append("</g>")
    return "".join(parts)


def _bar(bar: Bar, top: int, scale: Scale, room: float) -> str:
    """A context's bar, its short id, updates above and reuses below it."""
    span = scale.x(bar.start), max(scale.x(bar.end), scale.x(bar.start) + 2)
    bar_top = top + UPDATES + 1
    reuses = _n(len(bar.reuses), "reuse")
    tip = (
        f"context {bar.context_id}\nthread {bar.thread_id}\nrun {bar.run_id or '-'}\n"
        f"created {_t(bar.start)} UTC\n{bar.ending} {_t(bar.end)} UTC\n{reuses}, "
        f"{_n(len(bar.updates), 'update')}"
    )
    return (
        f'<g class="context" data-context="{escape(bar.context_id)}" '
        f'data-thread="{escape(bar.thread_id)}" data-run="{escape(bar.run_id or "")}" '
        f'data-ending="{escape(bar.ending)}" data-reuses="{len(bar.reuses)}">'
        f"<title>{escape(tip)}</title>"
        f'<rect class="bar {_css(bar.ending)}" x="{span[0]:.1f}" y="{bar_top}" '
        f'width="{span[1] - span[0]:.1f}" height="{BAR}" rx="2"/>'
        f"{_label(bar.context_id[:8], reuses, span, room, bar_top + 4 + BAR // 2)}"
        f"{_marks(scale, bar.updates, span, top, 'update')}"
        f"{_marks(scale, bar.reuses, span, bar_top + BAR + 1, 'reuse')}"
        "</g>"
    )


def _label(
    cid: str, reuses: str, span: tuple[float, float], room: float, y: int
) -> str:
    """The short context id in its bar, else after it, when there is room."""
    left, right = span
    short, full = len(cid) * MONO + 8, (len(cid) + len(reuses) + 3) * MONO + 8
    count = f'<tspan class="count"> · {reuses}</tspan>' if right - left >= full else ""
    if right - left >= short:
        return (
            f'<text class="cid" x="{left + 4:.1f}" y="{y}">{escape(cid)}{count}</text>'
        )
    if room - right >= short:
        return f'<text class="cid" x="{right + 3:.1f}" y="{y}">{escape(cid)}</text>'
    return ""


def _marks(
    scale: Scale, times: list[datetime], span: tuple[float, float], top: int, kind: str
) -> str:
    """One cell per bin of ``times`` within the bar, darker the more it holds."""
    height, peak = (REUSES if kind == "reuse" else UPDATES), scale.peaks[kind]
    parts = []
    for column, count in sorted(scale.bins(times).items()):
        left = max(LEFT + column * BIN, span[0])
        width = max(min(LEFT + (column + 1) * BIN, span[1]) - left, 1.0)
        parts.append(
            f'<rect class="{kind}" data-count="{count}" x="{left:.1f}" y="{top}" '
            f'width="{width:.1f}" height="{height}" '
            f'fill-opacity="{0.25 + 0.75 * count / peak:.2f}"/>'
        )
    return "".join(parts)


def _row(event: LedgerEvent, sealing: bool) -> str:
    details = {k: v for k, v in event.details.items() if sealing or k not in SEALING}
    cells = (
        str(event.version),
        _t(event.occurred_at),
        event.kind,
        event.thread_id,
        event.context_id,
        event.run_id or "",
        json.dumps(details, ensure_ascii=False, sort_keys=True),
    )
    body = "".join(f"<td>{escape(cell)}</td>" for cell in cells)
    return f'<tr class="{event.kind}" data-version="{event.version}">{body}</tr>'


def _t(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _n(count: int, thing: str) -> str:
    return f"{count} {thing}{'' if count == 1 else 's'}"


def _cut(text: str, limit: int = 28) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _css(ending: str) -> str:
    return "pending" if ending == PENDING else ending


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>ctxledger: contexts of {user}</title>
<style>
@page {{ size: A4 landscape; margin: 12mm; }}
body {{ font: 14px system-ui, sans-serif; margin: 24px; color: #1d2430; }}
h1 {{ font-size: 20px; margin-bottom: 4px; }}
#figures {{ display: flex; flex-wrap: wrap; gap: 6px 22px; margin: 10px 0; }}
#figures div {{ display: flex; flex-direction: column-reverse; }}
#figures dt {{ font-size: 11px; color: #5a6270; }}
#figures dd {{ margin: 0; font-size: 18px; font-weight: 600; }}
#chain {{ padding: 6px 10px; border-left: 4px solid; }}
#chain.holds {{ border-color: #2e8540; background: #eef7ef; }}
#chain.broken {{ border-color: #c0392b; background: #fbeceb; }}
code {{ font: 12px ui-monospace, monospace; word-break: break-all; }}
.legend span {{ display: inline-block; margin-right: 16px; font-size: 12px; }}
.legend i {{ display: inline-block; width: 16px; height: 10px; margin-right: 4px; }}
svg {{ max-width: 100%; height: auto; }}
.bar {{ stroke: #fff; stroke-width: 1; }}
.bar.open, .legend .open {{ fill: #5b9bd5; background: #5b9bd5; }}
.bar.cleared, .legend .cleared {{ fill: #aab2bc; background: #aab2bc; }}
.bar.expired, .legend .expired {{ fill: #eba55a; background: #eba55a; }}
.bar.pending, .legend .pending {{ fill: #f6d3ab; background: #f6d3ab; }}
.bar.pending {{ stroke: #c9782a; stroke-dasharray: 3 2; }}
.reuse, .legend .reuse {{ fill: #1f3a5f; background: #1f3a5f; }}
.update, .legend .update {{ fill: #8e44ad; background: #8e44ad; }}
.band0 {{ fill: #f4f5f7; }} .band1 {{ fill: #fff; }}
.grid {{ stroke: #d9dde3; }}
.axis, .date {{ font-size: 11px; fill: #5a6270; text-anchor: middle; }}
.thread {{ font-size: 13px; font-weight: 600; }}
.counts {{ font-size: 11px; fill: #5a6270; }}
.cid {{ font: 11px ui-monospace, monospace; fill: #101820; }}
.context:hover .bar {{ stroke: #101820; stroke-width: 1.5; }}
table {{ border-collapse: collapse; margin-top: 12px; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 3px 8px; text-align: left;
  font-size: 12px; vertical-align: top; }}
td:nth-child(5), td:last-child {{ font-family: ui-monospace, monospace; }}
</style>
</head>
<body>
<h1>Contexts of <span id="user">{user}</span></h1>
<p id="summary">{summary}</p>
<dl id="figures">{figures}</dl>
{chain}
<p class="legend"><span><i class="open"></i>open</span><span><i class="cleared"></i>
cleared</span><span><i class="expired"></i>expired</span><span><i class="pending"></i>
expired, not yet recorded</span><span><i class="reuse"></i>reuses (darker: more at
that time)</span><span><i class="update"></i>updates</span></p>
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
