"""``ctxledger checkpoint``: signed checkpoints of the log's Merkle tree."""

import sys
from pathlib import Path

import click

from ctxledger._cli import render
from ctxledger._cli.errors import reports_ledger_errors
from ledger import ContextLedger, write_checkpoint_key
from ledger._audit.files import replaced_whole, writable

KEY_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.group()
def checkpoint() -> None:
    """Sign the log's Merkle tree, and prove later that it was not rewritten."""


@checkpoint.command()
@click.option(
    "--origin",
    required=True,
    help="The log's name, e.g. example.com/ctxledger/prod (also the key's name).",
)
@click.option(
    "--out",
    "prefix",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Writes PREFIX.key (the signer key, mode 0600) and PREFIX.pub.",
)
@reports_ledger_errors
def keygen(origin: str, prefix: Path) -> None:
    """Generate an Ed25519 key to sign checkpoints with."""
    private, public = write_checkpoint_key(origin, prefix)
    render.line(f"signer key {private} (keep it secret; mode 0600)")
    render.line(f"verifier key {public}: {public.read_text(encoding='utf-8').strip()}")


@checkpoint.command()
@click.option(
    "--key", required=True, type=KEY_FILE, help="The signer key (PREFIX.key)."
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the signed note(s) to FILE (replaced whole).",
)
@click.pass_obj
@reports_ledger_errors
def sign(url: str, key: Path, out: Path | None) -> None:
    """Catch the tree up to the log's safe head and sign a checkpoint of it.

    Prints the signed note (one per shard, separated by a blank line) and keeps
    it in the ledger. Refused if the log no longer extends the last checkpoint."""
    if out is not None:
        writable(out, "out")
    with ContextLedger.open(url, create=False) as ledger:
        signed = ledger.sign_checkpoints(key)
    text = "\n".join(item.note for item in signed)
    if out is not None:
        with replaced_whole(out) as handle:
            handle.write(text.encode("utf-8"))
    sys.stdout.write(text)


@checkpoint.command()
@click.argument("path", metavar="FILE", type=KEY_FILE)
@click.option(
    "--public-key", required=True, type=KEY_FILE, help="The verifier key (PREFIX.pub)."
)
@click.pass_obj
@reports_ledger_errors
def verify(url: str, path: Path, public_key: Path) -> None:
    """Check a signed checkpoint against the log: exit 1 naming the first event
    that no longer matches (deleted, altered, added or reordered)."""
    with ContextLedger.open(url, create=False) as ledger:
        reports = ledger.verify_checkpoints(path, public_key)
    for report in reports:
        if report.holds:
            render.line(
                f"{report.origin}: the log ({report.tree_size} events) extends the "
                f"checkpoint of {report.checkpoint_size} events"
            )
        else:
            render.line(f"{report.origin}: NOT EXTENDED: {report.fault}")
    if not all(report.holds for report in reports):
        sys.exit(1)


@checkpoint.command()
@click.argument("user_id", metavar="USER")
@click.argument("version", type=click.IntRange(1))
@click.pass_obj
@reports_ledger_errors
def prove(url: str, user_id: str, version: int) -> None:
    """Print a C2SP tlog-proof of one event in the latest signed checkpoint."""
    with ContextLedger.open(url, create=False) as ledger:
        sys.stdout.write(ledger.prove_event(user_id, version))


def register(main: click.Group) -> None:
    main.add_command(checkpoint)
