"""The view commands of ctxledger, through the installed entry point."""

import csv
import io
import json
import sqlite3
from pathlib import Path

import pytest

from ledger import ContextLedger
from tests.helpers import run
from tests.tampering import execute_sql

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


def test_status_shows_positions_and_how_many_events_each_view_is_behind(
    url: str, tmp_path: Path
) -> None:
    run("--db", url, "project", cwd=tmp_path)
    with ContextLedger.open(url) as ledger:
        ledger.open_context("carol", "t1")

    result = run("--db", url, "status", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert _cells(result.stdout)[:2] == [
        ["view", "position", "head position", "events behind"],
        ["active", "4", "5", "1"],
    ]


@pytest.mark.postgres
def test_events_behind_and_rebuild_count_events_where_positions_skip_numbers(
    postgres_url: str, tmp_path: Path
) -> None:
    with ContextLedger.open(postgres_url) as ledger:
        ledger.open_context("alice", "t1")
    run("--db", postgres_url, "project", cwd=tmp_path)
    for _ in range(3):  # as rolled-back writes do, positions 2 to 4 go unused
        execute_sql(
            postgres_url,
            "SELECT nextval(pg_get_serial_sequence('{events}', 'notification_id'))",
        )
    with ContextLedger.open(postgres_url) as ledger:
        ledger.open_context("alice", "t2")

    status = run("--db", postgres_url, "status", "--json", cwd=tmp_path)
    rebuilt = run("--db", postgres_url, "rebuild", "audit", cwd=tmp_path)

    assert json.loads(status.stdout)[1] == {
        "view": "audit",
        "position": 1,
        "head": 5,
        "lag": 1,
    }
    assert rebuilt.stdout == "rebuilt audit: 2 event(s) applied\n"


def test_audit_json_has_the_documented_keys_in_utc(url: str, tmp_path: Path) -> None:
    run("--db", url, "project", cwd=tmp_path)

    result = run("--db", url, "audit", "alice", "--format", "json", cwd=tmp_path)

    rows = json.loads(result.stdout)
    assert [list(row) for row in rows] == [AUDIT_KEYS] * 3
    assert [row["kind"] for row in rows] == ["created", "reused", "cleared"]
    assert all(row["occurred_at"].endswith("Z") for row in rows)
    assert rows[0]["details"].pop("command_id")
    assert len(rows[0]["details"].pop("metadata_commitment")) == 64
    assert rows[0]["details"].pop("key_generation") == 0
    assert len(rows[0]["details"].pop("metadata_salt")) == 64
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


def test_audit_csv_prints_the_header_when_no_rows_match(
    url: str, tmp_path: Path
) -> None:
    run("--db", url, "project", cwd=tmp_path)

    result = run(
        "--db",
        url,
        "audit",
        "alice",
        "--kind",
        "expired",
        "--format",
        "csv",
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [",".join(AUDIT_KEYS)]


@pytest.mark.parametrize(
    ("args", "view"),
    [
        (("audit", "alice"), "audit"),
        (("active",), "active"),
        (("continuity", "--user", "alice"), "continuity"),
    ],
)
def test_a_view_read_while_behind_the_ledger_warns_on_stderr(
    url: str, tmp_path: Path, args: tuple[str, ...], view: str
) -> None:
    run("--db", url, "project", cwd=tmp_path)
    current = run("--db", url, *args, cwd=tmp_path)
    with ContextLedger.open(url) as ledger:
        ledger.open_context("carol", "t1")
        ledger.open_context("carol", "t2")

    behind = run("--db", url, *args, cwd=tmp_path)

    assert (current.returncode, current.stderr) == (0, "")
    assert behind.returncode == 0
    assert behind.stderr == (
        f"the {view} view is 2 event(s) behind the ledger: run `ctxledger project` "
        "to bring it up to date\n"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("audit", "dave"), "user 'dave' has no events in the audit view"),
        (
            ("audit", "dave", "--kind", "cleared"),
            "user 'dave' has no events in the audit view",
        ),
        (
            ("audit", "alice", "--kind", "expired", "--since", "2000-01-01"),
            "no events of user 'alice' match --since, --kind",
        ),
        (
            ("continuity", "--user", "dave"),
            "user 'dave' has no events in the continuity view",
        ),
    ],
)
def test_an_empty_answer_says_why_on_stderr_and_exits_0(
    url: str, tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    run("--db", url, "project", cwd=tmp_path)

    result = run("--db", url, *args, cwd=tmp_path)

    assert result.returncode == 0
    assert result.stderr == expected + "\n"


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
    assert rebuilt.stdout == "rebuilt audit: 4 event(s) applied\n"
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

    result = run("--db", f"sqlite:///{path}", "project", cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.startswith("StorageUnavailable: the ledger's database")
    assert "Traceback" not in result.stderr


def _cells(table: str) -> list[list[str]]:
    """The header and rows of a table printed to a pipe, as lists of cells."""
    return [
        [cell.strip() for cell in line.strip("┃│").split(line[0])]
        for line in table.splitlines()
        if line[:1] in ("┃", "│")
    ]
