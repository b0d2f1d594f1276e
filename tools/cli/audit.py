"""``ctxledger`` commands for auditors: answers from the event store itself."""

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import ParamSpec, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from ledger import ContextLedger, verify_export
from ledger.audit.export import replaced_whole, writable
from tools.cli.errors import reports_ledger_errors
from tools.cli.render import format_time, utc_time
from tools.cli.report import render_report

P = ParamSpec("P")
R = TypeVar("R")


def out_option(what: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """``--out FILE``: written whole under a temporary name, then renamed."""
    return click.option(
        "--out",
        required=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help=f"{what} It replaces FILE whole, or leaves it untouched.",
    )


def print_contexts_as_of(url: str, user_id: str, as_of: datetime, form: str) -> None:
    """``audit USER --as-of T``: the user's contexts as they stood then."""
    if form == "csv":
        raise click.UsageError("--as-of prints a table or json, not csv")
    with ContextLedger.open(url) as ledger:
        contexts = ledger.contexts_as_of(user_id, as_of)
    if form == "json":
        click.echo(json.dumps([c.model_dump(mode="json") for c in contexts], indent=2))
        return
    table = Table(
        "thread",
        "context",
        "run",
        "created (UTC)",
        "last used (UTC)",
        "expires (UTC)",
        "reuses",
        "metadata",
        title=Text(f"contexts of {user_id} as of {format_time(as_of)} UTC"),
    )
    for c in contexts:
        table.add_row(
            Text(c.thread_id),
            c.context_id[:8],
            Text(c.run_id or ""),
            format_time(c.created_at),
            format_time(c.last_used_at),
            format_time(c.expires_at),
            str(c.reuse_count),
            Text(json.dumps(c.metadata, ensure_ascii=False, sort_keys=True)),
        )
    Console(width=max(Console().width, 140)).print(table)
    click.echo(f"{len(contexts)} active context(s) at {as_of.astimezone(UTC)}")


def verify_chains(url: str, user_id: str | None, as_json: bool) -> None:
    """``verify --chain``: recompute the hash chains; exit 1 on a fault."""
    with ContextLedger.open(url) as ledger:
        if user_id is None:
            with Progress(
                TextColumn("verifying the chains"),
                BarColumn(),
                MofNCompleteColumn(),
                console=Console(stderr=True),
                transient=True,
            ) as progress:
                task = progress.add_task("events", total=ledger.chain_size())
                report = ledger.verify_chain(
                    on_page=lambda n: progress.advance(task, n)
                )
        else:
            report = ledger.verify_chain(user_id)
    if as_json:
        click.echo(
            json.dumps(
                [user.model_dump(mode="json") for user in report.users], indent=2
            )
        )
    else:
        for user in report.broken:
            fault = user.fault
            assert fault is not None  # noqa: S101  (broken users have one)
            click.echo(
                f"BROKEN user {user.user_id}: version {fault.version}: "
                f"{fault.fault}: {fault.detail}"
            )
        if user_id is not None:
            user = report.users[0]
            click.echo(
                f"user {user.user_id}: {user.events} event(s), head version "
                f"{user.head_version}, head hash {user.head_hash}"
            )
        state = "holds" if report.holds else f"is broken for {len(report.broken)}"
        click.echo(
            f"chain {state} (users: {len(report.users)}, events: {report.events})"
        )
    if not report.holds:
        sys.exit(1)


@click.command()
@click.argument("user_id", metavar="USER")
@click.option("--since", callback=utc_time, help="From this ISO 8601 time (inclusive).")
@click.option("--until", callback=utc_time, help="Before this time (exclusive).")
@out_option("The JSON Lines file to write.")
@click.pass_obj
@reports_ledger_errors
def export(
    url: str,
    user_id: str,
    since: datetime | None,
    until: datetime | None,
    out: Path,
) -> None:
    """Write a user's events and a manifest to a file that verify-export checks."""
    with ContextLedger.open(url) as ledger:
        manifest = ledger.export(user_id, out, since=since, until=until)
    versions = (
        f"versions {manifest.first_version} to {manifest.last_version}"
        if manifest.count
        else "no events"
    )
    click.echo(f"exported {manifest.count} event(s) of {user_id} to {out} ({versions})")
    click.echo(
        f"head hash {manifest.head_hash or '-'}: keep it to check the file later"
    )


@click.command(name="verify-export")
@click.argument(
    "path", metavar="FILE", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
def verify_export_command(path: Path) -> None:
    """Check an export offline: exit 1 if a line was edited, deleted or moved."""
    try:
        report = verify_export(path)
    except OSError as error:
        click.echo(f"cannot read {path}: {error.strerror or error}", err=True)
        sys.exit(1)
    if report.fault is not None:
        click.echo(f"{path}: NOT INTACT: {report.fault}")
        sys.exit(1)
    manifest = report.manifest
    assert manifest is not None  # noqa: S101  (an intact export has one)
    click.echo(
        f"{path}: intact: {manifest.count} event(s) of user {manifest.user_id}, "
        f"versions {manifest.first_version} to {manifest.last_version}, head hash "
        f"{manifest.head_hash or '-'}"
    )


@click.command()
@click.argument("user_id", metavar="USER")
@out_option("The HTML file to write.")
@click.pass_obj
@reports_ledger_errors
def report(url: str, user_id: str, out: Path) -> None:
    """Write a self-contained HTML timeline of a user's contexts and events."""
    writable(out)  # a bad path is refused before the history is read
    with ContextLedger.open(url) as ledger:
        events = ledger.history(user_id)
        now = datetime.now(tz=UTC)
    page = render_report(user_id, events, now)
    with replaced_whole(out) as handle:
        handle.write(page.encode("utf-8"))
    click.echo(f"wrote the timeline of {len(events)} event(s) of {user_id} to {out}")


def register(main: click.Group) -> None:
    for command in (export, verify_export_command, report):
        main.add_command(command)
