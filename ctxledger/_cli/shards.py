"""``ctxledger shards``: add, list, drain, reopen PostgreSQL shards and move users.

Every command runs on the ledger's URL (``--db`` or ``$CTXLEDGER_URL``: shard 0,
which holds the directory). A shard's URL may carry a password for connecting;
the directory never stores it and nothing here prints it.
"""

from dataclasses import asdict

import click

from ctxledger._cli import render
from ctxledger._cli.errors import reports_ledger_errors
from ctxledger._cli.render import Column
from ledger._shard_admin import ShardFigures, add_shard, drain_shard, list_shards
from ledger._shard_moves import move_user
from ledger._store.urls import shown_url

MOVE_STEPS = {
    "mark": "the directory marks the move",
    "fence": "the source shard refuses the user's writes",
    "copy": "events, snapshots and keys are copied",
    "verify": "the user's chain verifies on the target",
    "switch": "the directory gives the user to the target",
    "clean": "the source's copy is deleted",
}
SHARD_COLUMNS = (
    Column("shard", "number"),
    Column("url"),
    Column("state"),
    Column("users", "number"),
    Column("events", "number"),
)


@click.group()
def shards() -> None:
    """Spread users over several PostgreSQL databases (shards).

    Shard 0 is the ledger's own database (--db); it holds the directory that
    gives each user one shard. Passwords in URLs are used to connect, never
    stored or shown.
    """


@shards.command()
@click.argument("shard_url", metavar="URL")
@click.pass_obj
@reports_ledger_errors
def add(url: str, shard_url: str) -> None:
    """Add the empty PostgreSQL database at URL as a new shard, open to new users.

    Existing users stay where they are.
    """
    shard = add_shard(url, shard_url)
    render.line(f"added shard {shard.shard_id}: {shard.url} (open to new users)")


@shards.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array of shards.")
@click.pass_obj
@reports_ledger_errors
def list_command(url: str, as_json: bool) -> None:
    """Every shard with its state, users and events (unreachable ones say so)."""
    figures = list_shards(url)
    if as_json:
        render.print_json([_json_row(shard) for shard in figures])
        return
    render.print_table(SHARD_COLUMNS, (_row(shard) for shard in figures))
    unreachable = [str(shard.shard_id) for shard in figures if shard.events is None]
    if unreachable:
        render.note(
            f"shard(s) {', '.join(unreachable)} could not be read: their users' "
            "calls fail with StorageUnavailable until they are back"
        )


@shards.command()
@click.argument("shard_url", metavar="URL")
@click.pass_obj
@reports_ledger_errors
def drain(url: str, shard_url: str) -> None:
    """Stop new users going to the shard at URL; its users stay and keep working."""
    shard = drain_shard(url, shard_url)
    render.line(
        f"shard {shard.shard_id} ({shard.url}) is draining: no new users go "
        f"there; its {shard.users} user(s) stay"
    )


@shards.command("open")
@click.argument("shard_url", metavar="URL")
@click.pass_obj
@reports_ledger_errors
def open_command(url: str, shard_url: str) -> None:
    """Let new users go to the shard at URL again (undoes drain)."""
    shard = drain_shard(url, shard_url, reopen=True)
    render.line(f"shard {shard.shard_id} ({shard.url}) is open to new users")


@shards.command()
@click.argument("user_id", metavar="USER")
@click.option(
    "--to", "to_url", required=True, metavar="URL", help="The shard to move to."
)
@click.pass_obj
@reports_ledger_errors
def move(url: str, user_id: str, to_url: str) -> None:
    """Move USER's events, keys and snapshots to the shard at URL.

    Writes of the user during the move wait for it and land once, on the right
    shard. A move cut short is finished or undone by the next one.
    """
    moved = move_user(url, user_id, to_url, on_step=_step_done)
    render.line(
        f"moved {moved.user_id} from shard {moved.from_shard} to shard "
        f"{moved.to_shard}: {moved.events} event(s)"
    )


def _step_done(step: str) -> None:
    render.note(f"{step}: {MOVE_STEPS.get(step, 'done')}")


def _row(shard: ShardFigures) -> tuple[int, str, str, int, int | None]:
    return (
        shard.shard_id,
        shown_url(shard.url),
        shard.state,
        shard.users,
        shard.events,
    )


def _json_row(shard: ShardFigures) -> dict[str, object]:
    return asdict(shard) | {"url": shown_url(shard.url)}


def register(main: click.Group) -> None:
    main.add_command(shards)
