"""`ctxledger report` leaves the sealed metadata's commitment and salt out of the
details column unless `--show-commitments` is given."""

from pathlib import Path

from ledger import ContextLedger
from tests.helpers import cli_on


def test_the_report_shows_commitments_only_when_asked(
    durable_url: str, tmp_path: Path
) -> None:
    with ContextLedger.open(durable_url) as ledger:
        ledger.open_context("alice", "t", metadata={"topic": "refund"})
    plain, shown = tmp_path / "plain.html", tmp_path / "shown.html"

    first = cli_on("report", "alice", "--out", str(plain), url=durable_url)
    second = cli_on(
        "report", "alice", "--out", str(shown), "--show-commitments", url=durable_url
    )

    assert (first.returncode, second.returncode) == (0, 0), first.stderr
    assert "metadata_commitment" not in plain.read_text(encoding="utf-8")
    assert "refund" in plain.read_text(encoding="utf-8")
    assert "metadata_commitment" in shown.read_text(encoding="utf-8")
    assert "metadata_salt" in shown.read_text(encoding="utf-8")
