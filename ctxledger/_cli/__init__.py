"""The ``ctxledger`` command: parses arguments, calls the ledger, renders values."""

import os
import shlex
import sys
from datetime import datetime
from pathlib import Path

import click

from ctxledger._cli import audit as audit_commands
from ctxledger._cli import checkpoints, governance, render, shards
from ctxledger._cli.demo import DemoOptions, DemoSummary, run_demo
from ctxledger._cli.errors import reports_ledger_errors
from ctxledger._cli.render import Column, utc_time
from ctxledger._cli.views import caught_up, register
from ledger import EVENT_KINDS, ContextLedger
from ledger._store.urls import DEFAULT_URL, URL_VARIABLE, resolve_url, shown_url
from projections import Projections

HISTORY_COLUMNS = (
    Column("version", "number"),
    Column("at (UTC)", "time"),
    Column("kind"),
    Column("thread"),
    Column("context", "context"),
    Column("run"),
    Column("details", "details"),
)


@click.group()
@click.version_option(package_name="ctxledger", message="%(prog)s %(version)s")
@click.option(
    "--db",
    metavar="URL",
    default=None,
    help=f"Database URL (else ${URL_VARIABLE}, else {DEFAULT_URL}).",
)
@click.pass_context
def main(ctx: click.Context, db: str | None) -> None:
    """ctxledger: an event-sourced ledger of per-user execution contexts."""
    ctx.obj = resolve_url(db)


@main.command()
@click.option(
    "--users",
    default=25,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Simulated users.",
)
@click.option(
    "--threads",
    default=3,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Conversation threads per user.",
)
@click.option(
    "--messages",
    default=1000,
    show_default=True,
    type=click.IntRange(1),
    help="Messages in all, over every user.",
)
@click.option(
    "--seed", default=7, show_default=True, type=int, help="The simulation's seed."
)
@click.pass_obj
@reports_ledger_errors
def demo(url: str, users: int, threads: int, messages: int, seed: int) -> None:
    """Simulate a chat backend on the ledger, run the views, summarise both."""
    options = DemoOptions(users=users, threads=threads, messages=messages, seed=seed)
    with render.progress("messages", messages, unit="messages") as advance:
        summary = run_demo(url, options, lambda: advance(1))
    with Projections.open(url) as views:
        caught_up(views, "projecting")
        render.print_pairs(
            f"ctxledger demo on {shown_url(url)}", _demo_figures(summary, views)
        )
    # A URL with a password is not repeated: the commands read $CTXLEDGER_URL.
    shown = shown_url(url)
    command = (
        f"{_invoked_as()} --db {shlex.quote(url)}"
        if url not in (DEFAULT_URL, os.environ.get("CTXLEDGER_URL")) and shown == url
        else _invoked_as()
    )
    if shown != url and os.environ.get("CTXLEDGER_URL") != url:
        render.line(f"(set CTXLEDGER_URL to {shown}, its password included)")
    render.line("Next, try:")
    for args, why in (
        ("history demo-user-0000", "the busiest user's events, from the ledger"),
        ("status", "how many events each view is behind"),
        ("active --user demo-user-0000", "the busiest user's open contexts"),
        ("audit demo-user-0000 --kind cleared", "that user's clears, from the view"),
        ("continuity", "reuse figures of all users"),
        ("verify", "compare every view with a replay of the ledger"),
        ("rebuild audit", "rebuild a view from the first event"),
        ("expire", "record the expiries that are due now"),
    ):
        render.line(f"  {command} {args:<36} # {why}")


def _demo_figures(
    summary: DemoSummary, views: Projections
) -> list[tuple[str, render.Value]]:
    figures = views.continuity()
    return [
        ("messages simulated", summary.messages),
        ("simulated time", str(summary.simulated_span).split(".", 1)[0]),
        *((f"events written: {kind}", summary.events[kind]) for kind in EVENT_KINDS),
        ("events written in total", sum(summary.events.values())),
        ("active contexts (view)", views.count_active()),
        ("audit rows (view, all runs)", views.count_audit()),
        ("contexts created (all runs)", figures.created),
        ("reuses per context created", figures.reuses_per_created),
        ("contexts never reused", figures.never_reused),
        ("threads with two contexts at once", figures.threads_with_overlap),
    ]


def _invoked_as() -> str:
    """How this command was started (the script, or ``python -m ctxledger``)."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    if spec is not None and spec.name == "ctxledger.__main__":
        return f"{_shorter(sys.executable)} -m ctxledger"
    return _shorter(sys.argv[0])


def _shorter(program: str) -> str:
    """``program``, relative to the working folder when that is shorter."""
    relative = os.path.relpath(program) if Path(program).is_absolute() else program
    return relative if len(relative) < len(program) else program


@main.command()
@click.argument("user_id", metavar="USER")
@click.option("--since", callback=utc_time, help="From this ISO 8601 time (inclusive).")
@click.option("--until", callback=utc_time, help="Before this time (exclusive).")
@click.option(
    "--limit", type=click.IntRange(1), help="Only the first N events of the period."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON array of events.")
@click.pass_obj
@reports_ledger_errors
def history(
    url: str,
    *,
    user_id: str,
    since: datetime | None,
    until: datetime | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """Print a user's events, replayed from the ledger itself."""
    with ContextLedger.open(url, create=False) as ledger:
        events = ledger.history(user_id, since=since, until=until, limit=limit)
        if not events:
            period = [name for name, v in (("--since", since), ("--until", until)) if v]
            some = bool(period) and bool(ledger.history(user_id, limit=1))
            render.no_events(user_id, period if some else ())
    if as_json:
        render.print_json([event.model_dump(mode="json") for event in events])
        return
    render.print_table(
        HISTORY_COLUMNS,
        (
            (
                e.version,
                e.occurred_at,
                e.kind,
                e.thread_id,
                e.context_id,
                e.run_id,
                e.details,
            )
            for e in events
        ),
    )


@main.command()
@click.pass_obj
@reports_ledger_errors
def expire(url: str) -> None:
    """Record the expiry of every context past its time to live."""
    with ContextLedger.open(url) as ledger:
        count = ledger.expire_due()
    render.line(f"expired {count} context(s)")


register(main)
audit_commands.register(main)
governance.register(main)
shards.register(main)
checkpoints.register(main)
