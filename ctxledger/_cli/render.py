"""Everything the CLI prints: tables, times, JSON and CSV values, progress bars.

Every value is shown as plain text, never read as rich markup (ids are free text).
On a terminal, tables fit its width: ids fold onto more lines, details are cut.
Piped or redirected, a table is as wide as its values: one line per row, nothing
cut, context ids whole.
"""

import csv
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from ledger.errors import shorten

# Characters that would break a row over lines, reorder it on screen or not encode:
# controls, line and paragraph separators, bidirectional marks, lone surrogates.
# JSON text escapes C0 controls itself; its line breaks are its layout.
_UNPRINTABLE_BEYOND_C0 = (
    "\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff"
)
_UNPRINTABLE = re.compile(f"[\x00-\x1f{_UNPRINTABLE_BEYOND_C0}]")
_UNPRINTABLE_IN_JSON = re.compile(f"[{_UNPRINTABLE_BEYOND_C0}]")
_SHORT_ID = 8
_WIDE = 1_000_000  # wider than any row: a piped table is never squeezed

_CHAIN_ONLY = frozenset({"metadata_commitment", "metadata_salt"})
Kind = Literal["text", "context", "time", "number", "details"]
Value = str | int | float | datetime | Mapping[str, Any] | None


@dataclass(frozen=True)
class Column:
    """A table column: its header, and the kind of values that decides their layout.

    ``context`` is a context id: its first 8 characters on a terminal, whole when
    piped. ``details`` is a JSON value, cut to fit on a terminal.
    """

    header: str
    kind: Kind = "text"


def utc_time(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> datetime | None:
    """An ISO 8601 time option; one without a zone is taken as UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(
            f"{shorten(value)} is not an ISO 8601 time such as 2026-11-23T10:00:00Z"
        ) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed


def format_time(at: datetime | None) -> str:
    return "" if at is None else at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def escaped(text: str) -> str:
    """``text`` with every unprintable character written as a ``\\uXXXX`` escape."""
    return _UNPRINTABLE.sub(_escape, text)


def json_text(value: object, *, indent: int | None = None, sort: bool = False) -> str:
    """JSON as UTF-8 text; unprintable characters, only ever inside its strings,
    are JSON escapes, so the text still parses to ``value``."""
    text = json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=sort)
    return _UNPRINTABLE_IN_JSON.sub(_escape, text)


def print_json(value: object) -> None:
    click.echo(json_text(value, indent=2))


def print_csv(fieldnames: Sequence[str], records: Iterable[Mapping[str, Any]]) -> None:
    """A header line, always, then one line per record; mappings become JSON."""
    writer = csv.DictWriter(sys.stdout, fieldnames=list(fieldnames))
    writer.writeheader()
    for record in records:
        writer.writerow(
            {
                key: json_text(value) if isinstance(value, Mapping) else value
                for key, value in record.items()
            }
        )


def line(text: str) -> None:
    """A line of text on stdout."""
    click.echo(escaped(text))


def note(message: str) -> None:
    """A line on stderr: a warning or an empty answer, never data."""
    click.echo(escaped(message), err=True)


def no_events(user_id: str, unmatched: Sequence[str] = (), where: str = "") -> None:
    """Says on stderr why an answer is empty: the user has no events (``where``,
    such as "in the audit view"), or has some but none match ``unmatched`` options."""
    if unmatched:
        note(f"no events of user {shorten(user_id)} match {', '.join(unmatched)}")
    else:
        note(f"user {shorten(user_id)} has no events{' ' + where if where else ''}")


def print_table(
    columns: Sequence[Column],
    rows: Iterable[Sequence[Value]],
    *,
    title: str | None = None,
) -> None:
    """A table on stdout (see the module's docstring for its layout)."""
    terminal = sys.stdout.isatty()
    console = _stdout(terminal)
    table = Table(title=_text(title) if title else None)
    for column in columns:
        table.add_column(_text(column.header), **_layout(column.kind, terminal))
    for row in rows:
        cells = (_cell(v, c.kind, terminal) for v, c in zip(row, columns, strict=True))
        table.add_row(*cells)
    # Too wide for the terminal: expanded, the details column gets what is left.
    natural = console.measure(table, options=console.options.update_width(_WIDE))
    table.expand = terminal and natural.maximum > console.width
    console.print(table)


def print_pairs(title: str, pairs: Iterable[tuple[str, Value]]) -> None:
    """A table of names and values, without a header; no value shows as ``-``."""
    terminal = sys.stdout.isatty()
    table = Table(title=_text(title), show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(**_layout("text", terminal))
    for name, value in pairs:
        table.add_row(
            _text(name), _cell("-" if value is None else value, "text", terminal)
        )
    _stdout(terminal).print(table)


@contextmanager
def progress(
    label: str, total: int | None, unit: str = "events"
) -> Iterator[Callable[[int], None]]:
    """A bar on stderr with the share done, the rate and the time left; yields
    ``advance(step)``. It disappears when done, and shows only on a terminal."""
    with Progress(
        TextColumn("{task.description}", style="progress.description", markup=False),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]} " + unit + "/s"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=total, rate="-")

        def advance(step: int) -> None:
            bar.update(task, advance=step)
            speed = bar.tasks[task].speed
            bar.update(task, rate=f"{speed:,.0f}" if speed else "-")

        yield advance


def _stdout(terminal: bool) -> Console:
    return Console() if terminal else Console(width=_WIDE)


def _layout(kind: Kind, terminal: bool) -> dict[str, Any]:
    justify = "right" if kind == "number" else "left"
    if not terminal or kind in ("number", "context"):
        return {"no_wrap": True, "justify": justify}
    if kind == "details":
        # Takes the width the other columns leave, on one line, cut if need be.
        return {"no_wrap": True, "overflow": "ellipsis", "ratio": 1}
    return {"overflow": "fold"}  # times wrap between date and time


def _cell(value: Value, kind: Kind, terminal: bool) -> Text:
    if value is None:
        return Text("")
    if isinstance(value, datetime):
        return Text(format_time(value))
    if isinstance(value, Mapping):
        if kind == "details":  # the chain's commitment and its salt: in --json
            value = {k: v for k, v in value.items() if k not in _CHAIN_ONLY}
        return Text(json_text(value, sort=True))
    if kind == "context" and terminal:
        return _text(str(value)[:_SHORT_ID])
    return _text(str(value))


def _text(value: str) -> Text:
    return Text(escaped(value))


def _escape(found: re.Match[str]) -> str:
    return f"\\u{ord(found.group()):04x}"
