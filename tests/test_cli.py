"""The ctxledger command, run through its installed entry point."""

import json
from pathlib import Path

import pytest

from ledger import ContextLedger
from tests.helpers import run


def test_demo_writes_to_the_default_sqlite_file_and_summarises(tmp_path: Path) -> None:
    result = run("demo", "--users", "5", "--messages", "300", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "events written: reused" in result.stdout
    assert "threads with two contexts at once │ 0" in result.stdout
    assert "history demo-user-0000" in result.stdout
    with ContextLedger.open(f"sqlite:///{tmp_path / 'ctxledger.db'}") as ledger:
        kinds = {
            event.kind
            for user in range(5)
            for event in ledger.history(f"demo-user-{user:04d}")
        }
    assert kinds == {"created", "reused", "updated", "expired", "cleared"}


def test_a_second_demo_run_continues_the_histories_and_counts_its_own_events(
    tmp_path: Path,
) -> None:
    run("demo", "--users", "3", "--messages", "200", cwd=tmp_path)
    with ContextLedger.open(f"sqlite:///{tmp_path / 'ctxledger.db'}") as ledger:
        first = {u: len(ledger.history(f"demo-user-{u:04d}")) for u in range(3)}

    second = run("demo", "--users", "3", "--messages", "200", cwd=tmp_path)

    with ContextLedger.open(f"sqlite:///{tmp_path / 'ctxledger.db'}") as ledger:
        histories = [ledger.history(f"demo-user-{u:04d}") for u in range(3)]
    appended = sum(len(h) for h in histories) - sum(first.values())
    total_line = next(
        line for line in second.stdout.splitlines() if "written in total" in line
    )
    assert f" {appended} " in total_line
    for history in histories:
        times = [event.occurred_at for event in history]
        assert times == sorted(times)
    second_run = [e for u, h in enumerate(histories) for e in h[first[u] :]]
    assert len({event.occurred_at for event in second_run}) > len(second_run) // 2


def test_history_prints_a_users_events_as_json(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ContextLedger.open(url) as ledger:
        ledger.open_context("alice", "t", run_id="r1")
        ledger.open_context("alice", "t")

    result = run("--db", url, "history", "alice", "--json", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    events = json.loads(result.stdout)
    assert [(e["version"], e["kind"], e["run_id"]) for e in events] == [
        (1, "created", "r1"),
        (2, "reused", "r1"),
    ]


def test_expire_reports_the_count(tmp_path: Path) -> None:
    result = run("--db", f"sqlite:///{tmp_path / 'x.db'}", "expire", cwd=tmp_path)

    assert (result.returncode, result.stdout.strip()) == (0, "expired 0 context(s)")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ("--db", "mysql://x", "expire"),
            "LedgerConfigError: unsupported database URL",
        ),
        (
            ("--db", "memory://", "history", "none"),
            "InvalidContextInput: user_id='none'",
        ),
        (
            ("--db", "postgresql://postgres@127.0.0.1:1/test", "expire"),
            "StorageUnavailable: the ledger's database (postgresql 127.0.0.1:1/test",
        ),
    ],
)
def test_a_ledger_error_is_one_line_on_stderr_and_exit_1(
    tmp_path: Path, args: tuple[str, ...], expected: str
) -> None:
    result = run(*args, cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.startswith(expected)
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [("demo", "--users", "0"), ("demo", "--messages", "x"), ("no-such-command",)],
)
def test_bad_arguments_exit_2_with_usage(tmp_path: Path, args: tuple[str, ...]) -> None:
    result = run(*args, cwd=tmp_path)

    assert result.returncode == 2
    assert "Usage:" in result.stderr
    assert not (tmp_path / "ctxledger.db").exists()
