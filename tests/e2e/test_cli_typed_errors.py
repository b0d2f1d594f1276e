"""Values at the edges reach the CLI as typed errors, never as tracebacks: time options
out of range in UTC are one typed line, at the very edges they are answered."""

from pathlib import Path

import pytest

from ledger import ContextLedger, verify_export
from tests.helpers import one_line_error, run

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


OUT_OF_UTC = ("9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00")
EDGES_OF_UTC = (
    "9999-12-31T23:59:59.999999Z",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59+23:59",
    "0001-01-01T23:58:00-00:01",
)
TIME_OPTIONS = (
    ("history", "alice", "--since"),
    ("history", "alice", "--until"),
    ("audit", "alice", "--since"),
    ("audit", "alice", "--until"),
    ("audit", "alice", "--as-of"),
    ("export", "alice", "--out", "a.jsonl", "--since"),
    ("export", "alice", "--out", "a.jsonl", "--until"),
)


@pytest.fixture
def projected_url(url: str, tmp_path: Path) -> str:
    """A ledger of alice whose views have caught up."""
    assert run("--db", url, "project", cwd=tmp_path).returncode == 0
    return url


# Time options at the limits of datetime: a typed error when out of range in UTC,
# an answer at the very edges.


@pytest.mark.parametrize("value", OUT_OF_UTC)
@pytest.mark.parametrize("args", TIME_OPTIONS, ids=" ".join)
def test_a_time_option_out_of_range_in_utc_is_one_typed_line(
    url: str, tmp_path: Path, args: tuple[str, ...], value: str
) -> None:
    result = run("--db", url, *args, value, cwd=tmp_path)

    assert result.returncode == 1
    error = one_line_error(result, "InvalidContextInput")
    assert f"='{value}' is out of range once converted to UTC" in error
    assert not (tmp_path / "a.jsonl").exists()


@pytest.mark.parametrize("value", EDGES_OF_UTC)
@pytest.mark.parametrize("args", TIME_OPTIONS, ids=" ".join)
def test_a_time_option_at_the_edge_of_utc_is_answered(
    projected_url: str, tmp_path: Path, args: tuple[str, ...], value: str
) -> None:
    result = run("--db", projected_url, *args, value, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    if args[0] == "export":
        assert verify_export(tmp_path / "a.jsonl").intact


@pytest.mark.parametrize("value", ["", "2026-13-01", "nan", "x" * 100_000])
def test_a_time_option_that_is_not_a_time_is_a_short_usage_error(
    url: str, tmp_path: Path, value: str
) -> None:
    result = run("--db", url, "audit", "alice", "--as-of", value, cwd=tmp_path)

    assert result.returncode == 2
    assert "is not an ISO 8601 time" in result.stderr
    assert len(result.stderr) < 1000
