"""``ctxledger forget``: erasure of one user, or of every inactive user (retention)."""

from datetime import datetime

import click

from ledger import ContextLedger
from tools.cli import render
from tools.cli.errors import reports_ledger_errors
from tools.cli.render import utc_time


@click.command()
@click.argument("user_id", metavar="USER", required=False)
@click.option(
    "--inactive-since",
    callback=utc_time,
    metavar="TIME",
    help="Retention: forget every user with no event since this ISO 8601 time.",
)
@click.option(
    "--reason",
    default=None,
    help='Recorded in the forgotten event (default "erasure request", or the '
    "retention rule with --inactive-since).",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_obj
@reports_ledger_errors
def forget(
    url: str,
    user_id: str | None,
    inactive_since: datetime | None,
    reason: str | None,
    yes: bool,
) -> None:
    """Erase a user's personal data (their metadata), keeping the chain whole.

    The user's data key is destroyed and a `forgotten` event is appended, which
    ends the user's active contexts. The events stay, their metadata erased. It
    cannot be undone.
    """
    if (user_id is None) == (inactive_since is None):
        raise click.UsageError("give a USER or --inactive-since TIME (not both)")
    with ContextLedger.open(url, create=False) as ledger:
        if user_id is not None:
            if not yes:
                click.confirm(
                    f"Erase the personal data of user {render.escaped(user_id)}? "
                    "This cannot be undone",
                    abort=True,
                    err=True,
                )
            erased = ledger.forget_user(
                user_id, **({} if reason is None else {"reason": reason})
            )
            _report(user_id, erased)
            return
        assert inactive_since is not None  # noqa: S101  (checked above)
        users = ledger.inactive_users(inactive_since)
        since = inactive_since.isoformat()
        if not users:
            render.line(f"no user without events since {since}: nothing to forget")
            return
        if not yes:
            click.confirm(
                f"Erase the personal data of {len(users)} user(s) with no event "
                f"since {since}? This cannot be undone",
                abort=True,
                err=True,
            )
        total = 0
        for user in users:
            erased = ledger.forget_user(
                user,
                reason=reason or f"retention: no activity since {since}",
            )
            total += erased
            _report(user, erased)
        render.line(f"forgot {len(users)} user(s); {total} event(s) erased in all")


def _report(user_id: str, erased: int) -> None:
    render.line(
        f"forgot {user_id}: the personal data of {erased} event(s) is erased"
        if erased
        else f"forgot {user_id}: no readable personal data was left to erase"
    )


def register(main: click.Group) -> None:
    main.add_command(forget)
