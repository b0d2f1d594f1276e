"""The ctxledger command, run through its installed entry point."""

import json
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path

import pytest
from freezegun import freeze_time

from ledger import ContextLedger
from tests.helpers import run

T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


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


def test_two_demo_runs_on_one_ledger_stamp_no_event_after_the_present(
    durable_url: str, tmp_path: Path
) -> None:
    demo = ("--db", durable_url, "demo", "--users", "3", "--messages", "300")
    users = [f"demo-user-{n:04d}" for n in range(3)]
    first = run(*demo, cwd=tmp_path)
    with ContextLedger.open(durable_url) as ledger:
        before = {user: ledger.history(user) for user in users}

    second = run(*demo, cwd=tmp_path)
    finished = datetime.now(tz=UTC)

    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    with ContextLedger.open(durable_url) as ledger:
        added = [e for u in users for e in ledger.history(u)[len(before[u]) :]]
    first_last = max(history[-1].occurred_at for history in before.values())
    assert added
    assert all(first_last <= event.occurred_at <= finished for event in added)


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
            ("--db", "memory://", "history", "alice"),
            "LedgerNotFound: no ledger at ",
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


def test_version_prints_the_installed_package_version(tmp_path: Path) -> None:
    result = run("--version", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"ctxledger {version('ctxledger')}\n"


@pytest.fixture
def alice(durable_url: str) -> str:
    """Five events of alice, one minute apart from T0."""
    with ContextLedger.open(durable_url) as ledger, freeze_time(T0) as clock:
        for n in range(1, 6):
            ledger.open_context("alice", "t", run_id=f"r{n}")
            clock.tick(60)
    return durable_url


def _history_versions(url: str, *args: str, cwd: Path) -> list[int]:
    result = run("--db", url, "history", "alice", "--json", *args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return [event["version"] for event in json.loads(result.stdout)]


def test_history_since_and_until_select_a_period_in_utc(
    alice: str, tmp_path: Path
) -> None:
    period = ("--since", "2026-06-01T08:01:00", "--until", "2026-06-01T10:04:00+02:00")

    assert _history_versions(alice, *period, cwd=tmp_path) == [2, 3, 4]


def test_history_limit_keeps_the_first_events_of_the_period(
    alice: str, tmp_path: Path
) -> None:
    since = ("--since", "2026-06-01T08:01:00Z")

    assert _history_versions(alice, *since, "--limit", "2", cwd=tmp_path) == [2, 3]
    assert _history_versions(alice, "--limit", "9", cwd=tmp_path) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    "args", [("--limit", "0"), ("--limit", "x"), ("--since", "yesterday")]
)
def test_history_refuses_a_bad_option_with_usage(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    result = run(
        "--db", f"sqlite:///{tmp_path / 'x.db'}", "history", "a", *args, cwd=tmp_path
    )

    assert result.returncode == 2
    assert "Usage:" in result.stderr


def test_history_of_a_user_without_events_says_so_on_stderr_and_exits_0(
    alice: str, tmp_path: Path
) -> None:
    result = run("--db", alice, "history", "bob", "--json", cwd=tmp_path)

    assert result.returncode == 0
    assert json.loads(result.stdout) == []
    assert result.stderr == "user 'bob' has no events\n"


def test_history_of_a_period_without_events_says_none_match(
    alice: str, tmp_path: Path
) -> None:
    result = run(
        "--db", alice, "history", "alice", "--since", "2027-01-01", cwd=tmp_path
    )

    assert result.returncode == 0
    assert result.stderr == "no events of user 'alice' match --since\n"


def test_a_report_of_a_user_without_events_says_so_on_stderr(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with ContextLedger.open(url) as ledger:
        ledger.open_context("alice", "t1")

    result = run("--db", url, "report", "bob", "--out", "bob.html", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "user 'bob' has no events" in result.stderr
    assert (tmp_path / "bob.html").is_file()
