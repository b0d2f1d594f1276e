"""The ``ctxledger`` command: parses arguments, calls the ledger, renders values."""

import json
import os
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn
from rich.table import Table

from ledger import EVENT_KINDS, ContextLedger
from ledger.store.urls import DEFAULT_URL, URL_VARIABLE, resolve_url
from projections import Projections
from tools.cli import audit as audit_commands
from tools.cli.demo import DemoOptions, run_demo
from tools.cli.errors import reports_ledger_errors
from tools.cli.views import caught_up, register


@click.group()
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
@click.option("--users", default=25, show_default=True, type=click.IntRange(1, 100_000))
@click.option("--threads", default=3, show_default=True, type=click.IntRange(1, 1000))
@click.option("--messages", default=1000, show_default=True, type=click.IntRange(1))
@click.option("--seed", default=7, show_default=True, type=int)
@click.pass_obj
@reports_ledger_errors
def demo(url: str, users: int, threads: int, messages: int, seed: int) -> None:
    """Simulate a chat backend on the ledger, run the views, summarise both."""
    options = DemoOptions(users=users, threads=threads, messages=messages, seed=seed)
    console = Console(stderr=True)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("messages", total=messages)
        summary = run_demo(url, options, lambda: progress.advance(task))
    with Projections.open(url) as views:
        caught_up(views, "projecting")
        figures = views.continuity()
        active_now, audit_rows = views.count_active(), views.count_audit()
    table = Table(title=f"ctxledger demo on {url}", show_header=False)
    table.add_row("messages simulated", str(summary.messages))
    table.add_row("simulated time", str(summary.simulated_span).split(".", 1)[0])
    for kind in EVENT_KINDS:
        table.add_row(f"events written: {kind}", str(summary.events[kind]))
    table.add_row("events written in total", str(sum(summary.events.values())))
    table.add_row("active contexts (view)", str(active_now))
    table.add_row("audit rows (view, all runs)", str(audit_rows))
    table.add_row("contexts created (all runs)", str(figures.created))
    table.add_row("reuses per context created", str(figures.reuses_per_created))
    table.add_row("contexts never reused", str(figures.never_reused))
    table.add_row(
        "threads with two contexts at once", str(figures.threads_with_overlap)
    )
    Console().print(table)
    command = f"{_invoked_as()} --db {url}" if url != DEFAULT_URL else _invoked_as()
    click.echo("Next, try:")
    for args, why in (
        ("history demo-user-0000", "the busiest user's events, from the ledger"),
        ("status", "each view's position and lag"),
        ("active --user demo-user-0000", "the busiest user's open contexts"),
        ("audit demo-user-0000 --kind cleared", "that user's clears, from the view"),
        ("continuity", "reuse figures of all users"),
        ("verify", "compare every view with a replay of the ledger"),
        ("rebuild audit", "rebuild a view from the first event"),
        ("expire", "record the expiries that are due now"),
    ):
        click.echo(f"  {command} {args:<36} # {why}")


def _invoked_as() -> str:
    """How this command was started, relative to the working folder when shorter."""
    program = sys.argv[0]
    relative = os.path.relpath(program) if Path(program).is_absolute() else program
    return relative if len(relative) < len(program) else program


@main.command()
@click.argument("user_id")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of events.")
@click.pass_obj
@reports_ledger_errors
def history(url: str, user_id: str, as_json: bool) -> None:
    """Print every event of one user, replayed from the ledger."""
    with ContextLedger.open(url) as ledger:
        events = ledger.history(user_id)
    if as_json:
        click.echo(
            json.dumps([event.model_dump(mode="json") for event in events], indent=2)
        )
        return
    table = Table("version", "at (UTC)", "kind", "thread", "context", "run")
    table.add_column("details", overflow="ellipsis", no_wrap=True, max_width=60)
    for column in table.columns[:-1]:
        column.no_wrap = True
    for event in events:
        table.add_row(
            str(event.version),
            event.occurred_at.strftime("%Y-%m-%d %H:%M:%S"),
            event.kind,
            event.thread_id,
            event.context_id[:8],
            event.run_id or "",
            json.dumps(event.details, ensure_ascii=False, sort_keys=True),
        )
    Console(width=max(Console().width, 140)).print(table)


@main.command()
@click.pass_obj
@reports_ledger_errors
def expire(url: str) -> None:
    """Record the expiry of every context past its time to live."""
    with ContextLedger.open(url) as ledger:
        count = ledger.expire_due()
    click.echo(f"expired {count} context(s)")


register(main)
audit_commands.register(main)
