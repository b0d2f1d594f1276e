"""Commands that only read never create a ledger, and never speak of writes."""

import json
from pathlib import Path

import pytest

from ledger import ContextLedger
from tests.helpers import run, schema_exists, table_names

READ_ONLY_COMMANDS = [
    ("status",),
    ("status", "--json"),
    ("history", "alice"),
    ("audit", "alice"),
    ("audit", "alice", "--as-of", "2026-06-01T08:00:00Z"),
    ("active",),
    ("continuity",),
    ("verify",),
    ("verify", "--chain"),
    ("export", "alice", "--out", "alice.jsonl"),
    ("report", "alice", "--out", "alice.html"),
]
WRITING_COMMANDS = [
    ("expire",),
    ("project",),
    ("rebuild",),
    ("demo", "--users", "1", "--messages", "1"),
]


@pytest.mark.parametrize("command", READ_ONLY_COMMANDS)
def test_a_read_only_command_on_a_missing_sqlite_ledger_exits_1_creating_nothing(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    path = tmp_path / "absent.db"

    result = run("--db", f"sqlite:///{path}", *command, cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.startswith(f"LedgerNotFound: no ledger at sqlite file {path}")
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_command_without_db_does_not_create_the_default_file(
    tmp_path: Path,
) -> None:
    result = run("status", cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.startswith("LedgerNotFound: no ledger at ")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.postgres
@pytest.mark.parametrize("command", READ_ONLY_COMMANDS)
def test_a_read_only_command_on_a_missing_postgres_ledger_exits_1_creating_nothing(
    postgres_url: str, tmp_path: Path, command: tuple[str, ...]
) -> None:
    result = run("--db", postgres_url, *command, cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.startswith("LedgerNotFound: no ledger at ")
    assert not schema_exists(postgres_url)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", WRITING_COMMANDS)
def test_a_writing_command_creates_the_ledger(
    durable_url: str, tmp_path: Path, command: tuple[str, ...]
) -> None:
    result = run("--db", durable_url, *command, cwd=tmp_path)
    status = run("--db", durable_url, "status", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert status.returncode == 0, status.stderr


def test_read_only_commands_read_a_ledger_that_exists(
    durable_url: str, tmp_path: Path
) -> None:
    with ContextLedger.open(durable_url) as ledger:
        ledger.open_context("alice", "t1")
    assert run("--db", durable_url, "project", cwd=tmp_path).returncode == 0
    before = table_names(durable_url)

    results = [run("--db", durable_url, *c, cwd=tmp_path) for c in READ_ONLY_COMMANDS]

    assert [r.returncode for r in results] == [0] * len(READ_ONLY_COMMANDS), [
        r.stderr for r in results
    ]
    assert table_names(durable_url) == before


def test_view_commands_on_views_never_built_say_to_project_and_create_nothing(
    durable_url: str, tmp_path: Path
) -> None:
    with ContextLedger.open(durable_url) as ledger:
        ledger.open_context("alice", "t1")
    before = table_names(durable_url)

    status = run("--db", durable_url, "status", "--json", cwd=tmp_path)
    audit = run("--db", durable_url, "audit", "alice", cwd=tmp_path)
    verify = run("--db", durable_url, "verify", cwd=tmp_path)

    assert status.returncode == 0, status.stderr
    assert [row["position"] for row in json.loads(status.stdout)] == [0, 0, 0]
    assert audit.returncode == 1
    assert audit.stderr.startswith("ViewNotBuilt: the audit view has not been built")
    assert verify.returncode == 1
    assert "has not been built" in verify.stdout
    assert table_names(durable_url) == before


@pytest.mark.parametrize("command", [("status",), ("history", "alice")])
def test_a_read_that_cannot_connect_exits_1_without_mentioning_writes(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    url = "postgresql://postgres@127.0.0.1:1/test"

    result = run("--db", url, *command, cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.startswith(
        "StorageUnavailable: the ledger's database (postgresql 127.0.0.1:1/test"
    )
    assert "writ" not in result.stderr
    assert "append" not in result.stderr
