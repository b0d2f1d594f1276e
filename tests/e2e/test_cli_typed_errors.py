"""Values at the edges reach the CLI as typed errors, never as tracebacks."""

from pathlib import Path

import pytest

from ledger import ContextLedger
from tests.helpers import run

FAR = "9999-12-31T23:59:59-05:00"


@pytest.fixture
def url(durable_url: str) -> str:
    with ContextLedger.open(durable_url) as ledger:
        ledger.open_context("alice", "t1")
    return durable_url


@pytest.mark.parametrize(
    "args",
    [
        ("history", "alice", "--since", FAR),
        ("history", "alice", "--until", FAR),
        ("audit", "alice", "--since", FAR),
        ("audit", "alice", "--as-of", FAR),
        ("export", "alice", "--since", FAR, "--out", "a.jsonl"),
    ],
)
def test_a_time_out_of_range_in_utc_is_refused_with_a_typed_error(
    url: str, tmp_path: Path, args: tuple[str, ...]
) -> None:
    result = run("--db", url, *args, cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.startswith("InvalidContextInput: ")
    assert "out of range once converted to UTC" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["export", "report"])
def test_a_file_that_cannot_be_written_is_refused_and_nothing_is_left(
    url: str, tmp_path: Path, command: str
) -> None:
    out = "/proc/ctxledger-cannot-write-here"

    result = run("--db", url, command, "alice", "--out", out, cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.startswith(f"InvalidContextInput: out='{out}' cannot be")
    assert not Path(out).exists()


def test_an_export_line_with_a_number_out_of_range_is_not_intact(
    tmp_path: Path,
) -> None:
    export = tmp_path / "bad.jsonl"
    export.write_bytes(b'{"manifest":{"count":1e400}}\n')

    result = run("verify-export", str(export), cwd=tmp_path)

    assert result.returncode == 1
    assert "NOT INTACT: line 1: altered: the line is not JSON" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("audit", ""),
        ("audit", "undefined"),
        ("active", "--user", " alice"),
        ("continuity", "--user", "x" * 3000),
    ],
)
def test_the_views_refuse_a_bad_user_id_as_the_ledger_does(
    url: str, tmp_path: Path, args: tuple[str, ...]
) -> None:
    assert run("--db", url, "project", cwd=tmp_path).returncode == 0

    result = run("--db", url, *args, cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.startswith("InvalidContextInput: user_id=")
    assert len(result.stderr) < 600
