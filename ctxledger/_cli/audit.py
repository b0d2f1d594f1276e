"""``ctxledger`` commands for auditors: answers from the event store itself."""

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import ParamSpec, TypeVar

import click

from ctxledger._cli import render
from ctxledger._cli.errors import reports_ledger_errors
from ctxledger._cli.render import Column, format_time, utc_time
from ctxledger._cli.report import render_report
from ledger import ContextLedger, InvalidContextInput, verify_export
from ledger._audit.files import replaced_whole, writable
from projections._continuity import continuity_of

P = ParamSpec("P")
R = TypeVar("R")
CONTEXT_COLUMNS = (
    Column("thread"),
    Column("context", "context"),
    Column("run"),
    Column("created (UTC)", "time"),
    Column("last used (UTC)", "time"),
    Column("expires (UTC)", "time"),
    Column("reuses", "number"),
    Column("metadata", "details"),
)


def out_option(what: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """``--out FILE``: written whole under a temporary name, then renamed."""
    return click.option(
        "--out",
        required=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help=f"{what} It replaces FILE whole, or leaves it untouched.",
    )


@contextmanager
def out_named() -> Iterator[None]:
    """A refused file path is named as the user gave it: ``--out``, not ``path``."""
    try:
        yield
    except InvalidContextInput as error:
        if error.field != "path":
            raise
        raise InvalidContextInput(
            "out", error.value, error.problem, error.fix
        ) from None


def print_contexts_as_of(url: str, user_id: str, as_of: datetime, form: str) -> None:
    """``audit USER --as-of T``: the user's contexts as they stood then."""
    if form == "csv":
        raise click.UsageError("--as-of prints a table or json, not csv")
    with ContextLedger.open(url, create=False) as ledger:
        contexts = ledger.contexts_as_of(user_id, as_of)
    if form == "json":
        render.print_json([c.model_dump(mode="json") for c in contexts])
        return
    render.print_table(
        CONTEXT_COLUMNS,
        (
            (
                c.thread_id,
                c.context_id,
                c.run_id,
                c.created_at,
                c.last_used_at,
                c.expires_at,
                c.reuse_count,
                c.metadata,
            )
            for c in contexts
        ),
        title=f"contexts of {user_id} as of {format_time(as_of)} UTC",
    )
    render.line(f"{len(contexts)} active context(s) at {as_of.astimezone(UTC)}")


def verify_chains(url: str, user_id: str | None, as_json: bool) -> None:
    """``verify --chain``: recompute the hash chains; exit 1 on a fault."""
    with ContextLedger.open(url, create=False) as ledger:
        if user_id is None:
            with render.progress("verifying the chains", ledger.chain_size()) as step:
                report = ledger.verify_chain(on_page=step)
        else:
            report = ledger.verify_chain(user_id)
    if as_json:
        render.print_json([user.model_dump(mode="json") for user in report.users])
    else:
        for user in report.broken:
            fault = user.fault
            assert fault is not None  # noqa: S101  (broken users have one)
            render.line(
                f"BROKEN user {user.user_id}: version {fault.version}: "
                f"{fault.fault}: {fault.detail}"
            )
        if user_id is not None:
            user = report.users[0]
            render.line(
                f"user {user.user_id}: {user.events} event(s), head version "
                f"{user.head_version}, head hash {user.head_hash}"
            )
        state = "holds" if report.holds else f"is broken for {len(report.broken)}"
        render.line(
            f"chain {state} (users: {len(report.users)}, events: {report.events})"
        )
    if not report.holds:
        sys.exit(1)


@click.command()
@click.argument("user_id", metavar="USER")
@click.option("--since", callback=utc_time, help="From this ISO 8601 time (inclusive).")
@click.option("--until", callback=utc_time, help="Before this time (exclusive).")
@out_option("The JSON Lines file to write.")
@click.option(
    "--sign-with",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Sign a checkpoint first with this key (PREFIX.key), so that every "
    "event exported is proved in it.",
)
@click.pass_obj
@reports_ledger_errors
def export(  # noqa: PLR0917  (click passes the options by position)
    url: str,
    user_id: str,
    since: datetime | None,
    until: datetime | None,
    out: Path,
    sign_with: Path | None,
) -> None:
    """Write a user's events and a manifest to a file that verify-export checks.

    The manifest carries the latest signed checkpoint and an inclusion proof
    per event that it covers (see `ctxledger checkpoint`)."""
    writable(out, "out")  # a bad path is refused before the history is read
    with ContextLedger.open(url, create=False) as ledger, out_named():
        manifest = ledger.export(
            user_id, out, since=since, until=until, sign_with=sign_with
        )
    versions = (
        f"versions {manifest.first_version} to {manifest.last_version}"
        if manifest.count
        else "no events"
    )
    render.line(
        f"exported {manifest.count} event(s) of {user_id} to {out} ({versions})"
    )
    render.line(
        f"head hash {manifest.head_hash or '-'}: keep it to check the file later"
    )


@click.command(name="verify-export")
@click.argument(
    "path", metavar="FILE", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--public-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Also prove each event in the signed checkpoint the export carries, "
    "with this verifier key (PREFIX.pub).",
)
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="With --public-key: a signed checkpoint you hold from where they are "
    "published; the export's must be no older.",
)
@reports_ledger_errors
def verify_export_command(
    path: Path, public_key: Path | None, checkpoint: Path | None
) -> None:
    """Check an export offline: exit 1 if a line was edited, deleted or moved
    (and, with --public-key, if an event is not proved in the signed log, or
    the export ends before the user's last signed event)."""
    report = verify_export(path, public_key=public_key, checkpoint=checkpoint)
    if report.fault is not None:
        render.line(f"{path}: NOT INTACT: {report.fault}")
        sys.exit(1)
    manifest = report.manifest
    assert manifest is not None  # noqa: S101  (an intact export has one)
    render.line(
        f"{path}: intact: {manifest.count} event(s) of user {manifest.user_id}, "
        f"versions {manifest.first_version} to {manifest.last_version}, head hash "
        f"{manifest.head_hash or '-'}"
        + ("" if public_key is None else ", each event proved in the signed log")
    )


@click.command()
@click.argument("user_id", metavar="USER")
@out_option("The HTML file to write.")
@click.option(
    "--show-commitments",
    is_flag=True,
    help="Show each event's metadata commitment and salt in the details.",
)
@click.pass_obj
@reports_ledger_errors
def report(url: str, user_id: str, out: Path, show_commitments: bool) -> None:
    """Write a self-contained HTML timeline of a user's contexts and events."""
    writable(out, "out")  # a bad path is refused before the history is read
    with ContextLedger.open(url, create=False) as ledger:
        events = ledger.history(user_id)
        chain = ledger.verify_chain(user_id).users[0]
        now = datetime.now(tz=UTC)
    if not events:
        render.no_events(user_id)
    figures = continuity_of(user_id, events)
    page = render_report(user_id, events, now, figures, chain, sealing=show_commitments)
    with replaced_whole(out, "out") as handle:
        handle.write(page.encode("utf-8"))
    render.line(f"wrote the timeline of {len(events)} event(s) of {user_id} to {out}")
    if chain.fault is not None:
        render.note(
            f"the hash chain of {user_id} is broken at version {chain.fault.version} "
            f"({chain.fault.fault}); the report says so"
        )


def register(main: click.Group) -> None:
    for command in (export, verify_export_command, report):
        main.add_command(command)
