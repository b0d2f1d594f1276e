"""``ctxledger`` commands that run, rebuild, check and read the views."""

import csv
import json
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from types import FrameType
from typing import Any

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

from ledger import EVENT_KINDS
from projections import VIEW_NAMES, Projections
from projections.api import DEFAULT_BATCH_SIZE
from tools.cli.audit import print_contexts_as_of, verify_chains
from tools.cli.errors import reports_ledger_errors
from tools.cli.render import utc_time

BATCH_OPTION = click.option(
    "--batch-size",
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Events per view transaction.",
)


@contextmanager
def progress_bar(label: str, console: Console) -> Iterator[Callable[[int, int], None]]:
    """A bar with events/s and time left; yields ``advance(done, total)``."""
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[rate]} events/s"),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task(label, total=None, rate="-")

        def advance(step: int, total: int) -> None:
            progress.update(task, total=total, advance=step)
            speed = progress.tasks[task].speed
            progress.update(task, rate=f"{speed:,.0f}" if speed else "-")

        yield advance


def register(main: click.Group) -> None:
    for command in (project, rebuild, status, active, audit, continuity, verify):
        main.add_command(command)


@click.command()
@click.option(
    "--follow", is_flag=True, help="Keep going as events arrive (Ctrl-C stops)."
)
@BATCH_OPTION
@click.pass_obj
@reports_ledger_errors
def project(url: str, follow: bool, batch_size: int) -> None:
    """Apply the ledger's new events to all views (catch up, or follow)."""
    with Projections.open(url, batch_size=batch_size) as views:
        if not follow:
            applied = caught_up(views, "catching up")
            click.echo(_applied_line(applied))
            return
        stop = threading.Event()
        with _stopping_on_signals(stop):
            click.echo(f"following {url}; Ctrl-C or SIGTERM stops", err=True)
            views.follow(stop)
        click.echo(f"stopped at position {min(s.position for s in views.status())}")


@click.command()
@click.argument("names", metavar="[VIEW]...", nargs=-1, type=click.Choice(VIEW_NAMES))
@BATCH_OPTION
@click.pass_obj
@reports_ledger_errors
def rebuild(url: str, names: tuple[str, ...], batch_size: int) -> None:
    """Rebuild views from the first event (all when none named), then swap them in."""
    with Projections.open(url, batch_size=batch_size) as views:
        head = views.head()
        with progress_bar("rebuilding", Console(stderr=True)) as advance:
            applied = views.rebuild(list(names), on_batch=lambda n: advance(n, head))
    click.echo(f"rebuilt {', '.join(applied)} from {head} event(s)")


@click.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@reports_ledger_errors
def status(url: str, as_json: bool) -> None:
    """For each view: its position, the ledger's head and the lag."""
    with Projections.open(url) as views:
        rows = views.status()
    if as_json:
        click.echo(json.dumps([row.model_dump() for row in rows], indent=2))
        return
    table = Table("view", "position", "head", "lag")
    for row in rows:
        table.add_row(row.view, str(row.position), str(row.head), str(row.lag))
    Console().print(table)


@click.command()
@click.option("--user", "user_id", metavar="USER", help="Only this user's contexts.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1))
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@reports_ledger_errors
def active(url: str, user_id: str | None, limit: int, as_json: bool) -> None:
    """Active contexts from the view (run `project` first to bring it up to date)."""
    with Projections.open(url) as views:
        contexts = views.active_contexts(user_id, limit=limit)
        total = views.count_active(user_id)
    if as_json:
        click.echo(json.dumps([c.model_dump(mode="json") for c in contexts], indent=2))
        return
    table = Table(
        "user", "thread", "context", "run", "last used (UTC)", "expires (UTC)"
    )
    table.add_column("reuses", justify="right")
    for c in contexts:
        table.add_row(
            c.user_id,
            c.thread_id,
            c.context_id[:8],
            c.run_id or "",
            _time(c.last_used_at),
            _time(c.expires_at),
            str(c.reuse_count),
        )
    Console().print(table)
    click.echo(f"{len(contexts)} of {total} active context(s) shown")


@click.command()
@click.argument("user_id", metavar="USER")
@click.option(
    "--as-of",
    callback=utc_time,
    help="Instead: the user's contexts as they stood at this time, from the ledger.",
)
@click.option("--since", callback=utc_time, help="From this ISO 8601 time (inclusive).")
@click.option("--until", callback=utc_time, help="Before this time (exclusive).")
@click.option("--kind", type=click.Choice(EVENT_KINDS))
@click.option(
    "--format", "form", type=click.Choice(["table", "json", "csv"]), default="table"
)
@click.pass_obj
@reports_ledger_errors
def audit(
    url: str,
    *,
    user_id: str,
    as_of: datetime | None,
    since: datetime | None,
    until: datetime | None,
    kind: Any,
    form: str,
) -> None:
    """A user's events from the compliance audit view, in ledger order; with
    --as-of, the user's contexts at that time, replayed from the ledger."""
    if as_of is not None:
        if since or until or kind:
            raise click.UsageError(
                "--as-of does not combine with --since/--until/--kind"
            )
        print_contexts_as_of(url, user_id, as_of, form)
        return
    with Projections.open(url) as views:
        rows = views.audit_rows(user_id, since=since, until=until, kind=kind)
    records = [row.model_dump(mode="json") for row in rows]
    if form == "json":
        click.echo(json.dumps(records, indent=2, ensure_ascii=False))
    elif form == "csv":
        writer = csv.DictWriter(
            sys.stdout, fieldnames=list(records[0]) if records else []
        )
        writer.writeheader()
        for record in records:
            writer.writerow({**record, "details": json.dumps(record["details"])})
    else:
        table = Table(
            "position", "at (UTC)", "kind", "thread", "context", "run", "details"
        )
        for row in rows:
            table.add_row(
                str(row.position),
                _time(row.occurred_at),
                row.kind,
                row.thread_id,
                row.context_id[:8],
                row.run_id or "",
                Text(json.dumps(row.details, ensure_ascii=False, sort_keys=True)),
            )
        Console(width=max(Console().width, 140)).print(table)


@click.command()
@click.option("--user", "user_id", metavar="USER", help="One user (else totals).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_obj
@reports_ledger_errors
def continuity(url: str, user_id: str | None, as_json: bool) -> None:
    """Created, reused and ended contexts, and threads that had two at once."""
    with Projections.open(url) as views:
        figures = views.continuity(user_id)
    if as_json:
        click.echo(json.dumps(figures.model_dump(), indent=2))
        return
    table = Table(title=f"continuity of {user_id or 'all users'}", show_header=False)
    for name, value in figures.model_dump(exclude={"user_id"}).items():
        table.add_row(name.replace("_", " "), "-" if value is None else str(value))
    Console().print(table)


@click.command()
@click.option(
    "--chain", is_flag=True, help="Check the events' hash chains instead of the views."
)
@click.option("--user", "user_id", metavar="USER", help="With --chain: one user.")
@click.option(
    "--json", "as_json", is_flag=True, help="With --chain: every user's result."
)
@click.pass_obj
@reports_ledger_errors
def verify(url: str, chain: bool, user_id: str | None, as_json: bool) -> None:
    """Replay the ledger and compare every view with it; exit 1 on a difference.

    With --chain: recompute each user's hash chain from the stored events; exit 1
    naming the user, the version and the fault (altered, missing, reordered)."""
    if chain:
        verify_chains(url, user_id, as_json)
        return
    if user_id is not None or as_json:
        raise click.UsageError("--user and --json go with --chain")
    with Projections.open(url) as views:
        found = views.verify()
    for name, differences in found.items():
        click.echo(f"{name}: {'equal to the replay' if not differences else 'DIFFERS'}")
        for difference in differences:
            click.echo(f"  {difference}")
    if any(found.values()):
        click.echo("Rebuild the differing views: ctxledger rebuild VIEW", err=True)
        sys.exit(1)


def caught_up(views: Projections, label: str) -> dict[str, int]:
    lag = max((s.lag for s in views.status()), default=0)
    with progress_bar(label, Console(stderr=True)) as advance:
        return views.catch_up(on_batch=lambda n: advance(n, lag))


def _applied_line(applied: dict[str, int]) -> str:
    parts = [f"{name} +{count}" for name, count in applied.items()]
    return f"events applied: {', '.join(parts)}"


def _time(at: datetime | None) -> str:
    return "" if at is None else at.strftime("%Y-%m-%d %H:%M:%S")


@contextmanager
def _stopping_on_signals(stop: threading.Event) -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = [signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)]
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
