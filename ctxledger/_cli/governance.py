"""``ctxledger forget``: erasure of one user, or of every inactive user (retention)."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import click

from ctxledger._cli import render
from ctxledger._cli.errors import reports_ledger_errors
from ctxledger._cli.render import utc_time
from ledger import ContextLedger, LedgerCorrupted


class _OneUserOrRetention(click.Command):
    """``forget``'s usage line: a USER, or --inactive-since TIME."""

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        return [self.options_metavar or "[OPTIONS]", "(USER | --inactive-since TIME)"]


@click.command(cls=_OneUserOrRetention)
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
    """Erase a USER's personal data (their metadata), keeping the chain whole;
    or, with --inactive-since TIME and no USER, every user with no event since.

    The user's data key is destroyed and a `forgotten` event is appended, which
    ends the user's active contexts. The events stay, their metadata erased. It
    cannot be undone.
    """
    if (user_id is None) == (inactive_since is None):
        raise click.UsageError("give a USER or --inactive-since TIME (not both)")
    # Only an existing ledger: opened to read first, so nothing is created.
    with ContextLedger.open(url, create=False):
        pass
    with ContextLedger.open(url) as ledger, _warnings_on_stderr():
        if user_id is not None:
            _forget_one(ledger, user_id, reason, yes=yes)
        else:
            assert inactive_since is not None  # noqa: S101  (checked above)
            _forget_inactive(ledger, inactive_since, reason, yes=yes)


def _forget_one(
    ledger: ContextLedger, user_id: str, reason: str | None, *, yes: bool
) -> None:
    try:
        known = bool(ledger.history(user_id, limit=1))
    except LedgerCorrupted:
        known = True  # damaged: forget_user still destroys the user's keys
    if not known:
        render.no_events(user_id, where="in this ledger: nothing was forgotten")
        return
    if not yes:
        click.confirm(
            f"Erase the personal data of user {render.escaped(user_id)}? This "
            "cannot be undone",
            abort=True,
            err=True,
        )
    erased = ledger.forget_user(
        user_id, **({} if reason is None else {"reason": reason})
    )
    _report(user_id, erased)


def _forget_inactive(
    ledger: ContextLedger, since: datetime, reason: str | None, *, yes: bool
) -> None:
    users = ledger.inactive_users(since)
    shown = since.isoformat()
    if not users:
        render.line(f"no user without events since {shown}: nothing to forget")
        return
    if not yes:
        click.confirm(
            f"Erase the personal data of {len(users)} user(s) with no event since "
            f"{shown}? This cannot be undone",
            abort=True,
            err=True,
        )
    # Users active again since they were listed are left alone.
    forgotten = ledger.forget_inactive(since, reason=reason)
    for user, erased in forgotten.items():
        _report(user, erased)
    skipped = len(set(users) - set(forgotten))
    if skipped:
        render.note(f"{skipped} user(s) were active again and were left alone")
    render.line(
        f"forgot {len(forgotten)} user(s); {sum(forgotten.values())} event(s) "
        "erased in all"
    )


def _report(user_id: str, erased: int) -> None:
    render.line(
        f"forgot {user_id}: the personal data of {erased} event(s) is erased"
        if erased
        else f"forgot {user_id}: no readable personal data was left to erase"
    )


@contextmanager
def _warnings_on_stderr() -> Iterator[None]:
    """The ledger's warnings (such as metadata of an older release that stays
    readable) as notes on stderr while the command runs."""

    class _Notes(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            render.note(f"warning: {record.getMessage()}")

    handler = _Notes(logging.WARNING)
    logger = logging.getLogger("ledger")
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False  # printed once
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def register(main: click.Group) -> None:
    main.add_command(forget)
