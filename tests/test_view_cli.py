"""The view commands of ctxledger, through the installed entry point."""

import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest

from ledger import ContextLedger
from tests.helpers import execute_sql, run

AUDIT_KEYS = [
    "position",
    "user_id",
    "kind",
    "context_id",
    "thread_id",
    "run_id",
    "occurred_at",
    "details",
]


@pytest.fixture
def url(durable_url: str) -> str:
    with ContextLedger.open(durable_url) as ledger:
        first = ledger.open_context("alice", "t1", run_id="r1", metadata={"a": 1})
        ledger.open_context("alice", "t1", run_id="r2")
        ledger.clear_context("alice", first.context_id)
        ledger.open_context("bob", "t1")
    return durable_url


def test_project_then_status_shows_no_lag(url: str, tmp_path: Path) -> None:
    projected = run("--db", url, "project", cwd=tmp_path)
    status = run("--db", url, "status", "--json", cwd=tmp_path)

    assert projected.returncode == 0, projected.stderr
    assert (
        projected.stdout.strip() == "events applied: active +4, audit +4, continuity +4"
    )
    assert json.loads(status.stdout) == [
        {"view": name, "position": 4, "head": 4, "lag": 0}
        for name in ("active", "audit", "continuity")
    ]


def test_audit_json_has_the_documented_keys_in_utc(url: str, tmp_path: Path) -> None:
    run("--db", url, "project", cwd=tmp_path)

    result = run("--db", url, "audit", "alice", "--format", "json", cwd=tmp_path)

    rows = json.loads(result.stdout)
    assert [list(row) for row in rows] == [AUDIT_KEYS] * 3
    assert [row["kind"] for row in rows] == ["created", "reused", "cleared"]
    assert all(row["occurred_at"].endswith("Z") for row in rows)
    assert rows[0]["details"] == {"metadata": {"a": 1}, "ttl_seconds": None}


def test_audit_csv_and_kind_filter(url: str, tmp_path: Path) -> None:
    run("--db", url, "project", cwd=tmp_path)

    result = run(
        "--db",
        url,
        "audit",
        "alice",
        "--kind",
        "reused",
        "--format",
        "csv",
        cwd=tmp_path,
    )

    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(row["kind"], row["run_id"]) for row in rows] == [("reused", "r2")]


def test_active_and_continuity_as_json(url: str, tmp_path: Path) -> None:
    run("--db", url, "project", cwd=tmp_path)

    active = json.loads(run("--db", url, "active", "--json", cwd=tmp_path).stdout)
    figures = json.loads(run("--db", url, "continuity", "--json", cwd=tmp_path).stdout)

    assert [c["user_id"] for c in active] == ["bob"]
    assert (figures["created"], figures["reused"], figures["cleared"]) == (2, 1, 1)
    assert figures["threads_with_overlap"] == 0


def test_verify_exits_1_naming_a_row_altered_in_the_database(
    url: str, tmp_path: Path
) -> None:
    run("--db", url, "project", cwd=tmp_path)
    clean = run("--db", url, "verify", cwd=tmp_path)
    execute_sql(url, "UPDATE ctxl_audit SET user_id = 'mallory' WHERE position = 2")

    altered = run("--db", url, "verify", cwd=tmp_path)
    rebuilt = run("--db", url, "rebuild", "audit", cwd=tmp_path)
    again = run("--db", url, "verify", cwd=tmp_path)

    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert altered.returncode == 1
    assert "audit: DIFFERS" in altered.stdout
    assert "audit position 2: user_id: view 'mallory', replay 'alice'" in altered.stdout
    assert rebuilt.stdout.strip() == "rebuilt audit from 4 event(s)"
    assert again.returncode == 0


@pytest.mark.parametrize(
    "args",
    [
        ("audit", "alice", "--since", "yesterday"),
        ("audit", "alice", "--kind", "opened"),
        ("rebuild", "sessions"),
        ("project", "--batch-size", "0"),
        ("audit",),
    ],
)
def test_bad_view_arguments_exit_2_with_usage(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    result = run("--db", f"sqlite:///{tmp_path / 'x.db'}", *args, cwd=tmp_path)

    assert result.returncode == 2
    assert "Usage:" in result.stderr


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://postgres@127.0.0.1:1/test", "StorageUnavailable: "),
        ("memory://", "ViewsNeedDurableStorage: views need SQLite or PostgreSQL"),
    ],
)
@pytest.mark.parametrize("command", ["project", "status", "verify"])
def test_view_commands_report_an_unusable_database_and_exit_1(
    tmp_path: Path, url: str, expected: str, command: str
) -> None:
    result = run("--db", url, command, cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.startswith(expected)
    assert "Traceback" not in result.stderr


def test_a_failure_while_creating_the_view_tables_is_reported_not_raised(
    tmp_path: Path,
) -> None:
    path = tmp_path / "foreign.db"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE tracking (something_else INTEGER)")

    result = run("--db", f"sqlite:///{path}", "status", cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.startswith("StorageUnavailable: the ledger's database")
    assert "Traceback" not in result.stderr
