"""``ctxledger`` commands that run, rebuild, check and read the views."""

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from types import FrameType
from typing import Any

import click

from ctxledger._cli import render
from ctxledger._cli.audit import print_contexts_as_of, verify_chains
from ctxledger._cli.errors import reports_ledger_errors
from ctxledger._cli.render import Column, utc_time
from ctxledger._cli.view_positions import (
    shard_of,
    shard_status_row,
    stopped_line,
    warn_if_behind,
)
from ledger import EVENT_KINDS, Context, StorageUnavailable
from ledger import _metrics as metrics
from ledger._store.urls import shown_url
from projections import VIEW_NAMES, Projections, ShardViewStatus
from projections._api import DEFAULT_BATCH_SIZE
from projections._models import AuditRow

BATCH_OPTION = click.option(
    "--batch-size",
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Events per view transaction.",
)
AUDIT_FIELDS = tuple(AuditRow.model_fields)
STATUS_COLUMNS = (
    Column("view"),
    Column("position", "number"),
    Column("head position", "number"),
    Column("events behind", "number"),
)
SHARD_STATUS_COLUMNS = (
    Column("view"),
    Column("shard", "number"),
    Column("position", "number"),
    Column("head position", "number"),
    Column("events behind", "number"),
)
ACTIVE_COLUMNS = (
    Column("user"),
    Column("thread"),
    Column("context", "context"),
    Column("run"),
    Column("last used (UTC)", "time"),
    Column("expires (UTC)", "time"),
    Column("reuses", "number"),
)
AUDIT_COLUMNS = (
    Column("position", "number"),
    Column("at (UTC)", "time"),
    Column("kind"),
    Column("thread"),
    Column("context", "context"),
    Column("run"),
    Column("details", "details"),
)


def register(main: click.Group) -> None:
    for command in (project, rebuild, status, active, audit, continuity, verify):
        main.add_command(command)


@click.command()
@click.option(
    "--follow", is_flag=True, help="Keep going as events arrive (Ctrl-C stops)."
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    metavar="PORT",
    help="Serve Prometheus metrics at /metrics on PORT (needs ctxledger[metrics]).",
)
@click.option(
    "--metrics-host",
    default=metrics.DEFAULT_HOST,
    show_default=True,
    metavar="ADDRESS",
    help="The address the metrics listen on (0.0.0.0 or :: for every interface).",
)
@BATCH_OPTION
@click.pass_obj
@reports_ledger_errors
def project(
    url: str,
    *,
    follow: bool,
    metrics_port: int | None,
    metrics_host: str,
    batch_size: int,
) -> None:
    """Apply the ledger's new events to all views (catch up, or follow)."""
    if metrics_port is not None:
        metrics.serve(metrics_port, metrics_host)
        shown = f"[{metrics_host}]" if ":" in metrics_host else metrics_host
        render.note(f"serving metrics at http://{shown}:{metrics_port}/metrics")
    with Projections.open(url, batch_size=batch_size) as views:
        if not follow:
            applied = caught_up(views, "catching up")
            render.line(_applied_line(applied))
            return
        stop = threading.Event()
        with _stopping_on_signals(stop):
            render.note(f"following {shown_url(url)}; Ctrl-C or SIGTERM stops")
            reached = views.follow(stop, on_failure=_report_failure)
        # Not read again: the database may be the reason it was stopped.
        render.line(stopped_line(reached))


@click.command()
@click.argument("names", metavar="[VIEW]...", nargs=-1, type=click.Choice(VIEW_NAMES))
@BATCH_OPTION
@click.pass_obj
@reports_ledger_errors
def rebuild(url: str, names: tuple[str, ...], batch_size: int) -> None:
    """Rebuild views from the first event (all when none named), then swap them in."""
    with (
        Projections.open(url, batch_size=batch_size) as views,
        render.progress("rebuilding", sum(views.heads().values())) as advance,
    ):
        applied = views.rebuild(list(names), on_batch=advance)
    for name, count in applied.items():
        render.line(f"rebuilt {name}: {count} event(s) applied")


@click.command()
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON array: view, position, head, lag (and shard, reachable).",
)
@click.pass_obj
@reports_ledger_errors
def status(url: str, as_json: bool) -> None:
    """For each view: its position, the ledger's head and how many events it is
    behind."""
    with Projections.open(url, create=False) as views:
        rows = views.status()
    if as_json:
        render.print_json([row.model_dump() for row in rows])
        return
    by_shard = [row for row in rows if isinstance(row, ShardViewStatus)]
    if by_shard:
        render.print_table(SHARD_STATUS_COLUMNS, map(shard_status_row, by_shard))
        return
    render.print_table(
        STATUS_COLUMNS, ((row.view, row.position, row.head, row.lag) for row in rows)
    )


@click.command()
@click.option("--user", "user_id", metavar="USER", help="Only this user's contexts.")
@click.option(
    "--limit",
    default=100,
    show_default=True,
    type=click.IntRange(1),
    metavar="N",
    help="At most N contexts.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON array of contexts.")
@click.pass_obj
@reports_ledger_errors
def active(url: str, user_id: str | None, limit: int, as_json: bool) -> None:
    """Active contexts from the view (run `project` first to bring it up to date).

    A context whose time to live has run out is left out, as `active_contexts`
    leaves it out; how many were is said on stderr until `expire` records it."""
    now = datetime.now(tz=UTC)
    with Projections.open(url, create=False) as views:
        listed = views.active_contexts(user_id, limit=limit)
        due = _past_due(views, user_id, listed, now)
        total = views.count_active(user_id) - len(due)
        warn_if_behind(views, "active")
    contexts = [c for c in listed if c.context_id not in due]
    if due:
        render.note(
            f"{len(due)} context(s) past their time to live left out; `ctxledger "
            "expire` records their expiry (then `ctxledger project`)"
        )
    if as_json:
        render.print_json([c.model_dump(mode="json") for c in contexts])
        return
    render.print_table(
        ACTIVE_COLUMNS,
        (
            (
                c.user_id,
                c.thread_id,
                c.context_id,
                c.run_id,
                c.last_used_at,
                c.expires_at,
                c.reuse_count,
            )
            for c in contexts
        ),
    )
    render.line(f"{len(contexts)} of {total} active context(s) shown")


def _past_due(
    views: Projections, user_id: str | None, listed: list[Context], now: datetime
) -> set[str]:
    """The ids of the view's contexts (the user's) whose time has run out."""
    due = {c.context_id for c in listed if c.is_due(now)}
    for context in views.expiring_before(now):
        if user_id is None or context.user_id == user_id:
            due.add(context.context_id)
    return due


@click.command()
@click.argument("user_id", metavar="USER")
@click.option(
    "--as-of",
    callback=utc_time,
    help="Instead: the user's contexts as they stood at this time, from the ledger.",
)
@click.option("--since", callback=utc_time, help="From this ISO 8601 time (inclusive).")
@click.option("--until", callback=utc_time, help="Before this time (exclusive).")
@click.option(
    "--kind", type=click.Choice(EVENT_KINDS), help="Only events of this kind."
)
@click.option(
    "--format",
    "form",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="How the rows are printed.",
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
    with Projections.open(url, create=False) as views:
        rows = views.audit_rows(user_id, since=since, until=until, kind=kind)
        if not rows:
            filters = [n for n, v in (("--since", since), ("--until", until)) if v]
            filters += ["--kind"] if kind else []
            some = bool(filters) and bool(views.audit_rows(user_id))
            render.no_events(user_id, filters if some else (), "in the audit view")
        warn_if_behind(views, "audit")
    _print_audit_rows(rows, form)


def _print_audit_rows(rows: list[AuditRow], form: str) -> None:
    """The audit view's rows as JSON, CSV or a table."""
    if form == "json":
        render.print_json([row.model_dump(mode="json") for row in rows])
    elif form == "csv":
        render.print_csv(AUDIT_FIELDS, (row.model_dump(mode="json") for row in rows))
    else:
        render.print_table(
            AUDIT_COLUMNS,
            (
                (
                    row.position,
                    row.occurred_at,
                    row.kind,
                    row.thread_id,
                    row.context_id,
                    row.run_id,
                    row.details,
                )
                for row in rows
            ),
        )


@click.command()
@click.option("--user", "user_id", metavar="USER", help="One user (else totals).")
@click.option("--json", "as_json", is_flag=True, help="The figures as one JSON object.")
@click.pass_obj
@reports_ledger_errors
def continuity(url: str, user_id: str | None, as_json: bool) -> None:
    """Created, reused and ended contexts, and threads that had two at once."""
    with Projections.open(url, create=False) as views:
        figures = views.continuity(user_id)
        if user_id is not None and not figures.users:
            render.no_events(user_id, where="in the continuity view")
        warn_if_behind(views, "continuity")
    if as_json:
        render.print_json(figures.model_dump())
        return
    render.print_pairs(
        f"continuity of {user_id or 'all users'}",
        (
            (name.replace("_", " "), value)
            for name, value in figures.model_dump(exclude={"user_id"}).items()
        ),
    )


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
    with Projections.open(url, create=False) as views:
        found = views.verify()
    for name, differences in found.items():
        render.line(
            f"{name}: {'equal to the replay' if not differences else 'DIFFERS'}"
        )
        for difference in differences:
            render.line(f"  {difference}")
    if any(found.values()):
        render.note(
            "Bring views that are behind up to date with `ctxledger project`; "
            "rebuild views whose rows differ: ctxledger rebuild VIEW"
        )
        sys.exit(1)


def caught_up(views: Projections, label: str) -> dict[str, int]:
    """Catches up every view, with a progress bar over the positions to apply
    (on each shard's log, the farthest any view is behind)."""
    behind: dict[int, int] = {}
    for row in views.status():
        shard = shard_of(row)
        behind[shard] = max(behind.get(shard, 0), row.head - row.position)
    with render.progress(label, sum(behind.values())) as advance:
        return views.catch_up(on_batch=advance)


def _report_failure(failure: StorageUnavailable, pause: float) -> None:
    """One line on stderr per database failure while following."""
    render.note(f"{type(failure).__name__}: {failure}; trying again in {pause:g} s")


def _applied_line(applied: dict[str, int]) -> str:
    parts = [f"{name} +{count}" for name, count in applied.items()]
    return f"events applied: {', '.join(parts)}"


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
