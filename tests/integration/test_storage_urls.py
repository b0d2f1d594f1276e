"""Database URLs: what each one configures, and clear errors for bad ones: every
malformed URL is a LedgerConfigError that names the problem and never shows a
password, and the CLI refuses it in one line."""

import os
import signal
import sqlite3
import subprocess
from pathlib import Path

import psycopg
import pytest

from ledger import ContextLedger, LedgerConfigError, LedgerError, StorageUnavailable
from ledger._store.urls import DEFAULT_URL, resolve_url, storage_for
from projections import Projections
from tests.helpers import CTXLEDGER, one_line_error, run


def test_no_url_means_the_environment_variable_then_the_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CTXLEDGER_URL", raising=False)
    assert resolve_url(None) == DEFAULT_URL == "sqlite:///ctxledger.db"

    monkeypatch.setenv("CTXLEDGER_URL", "memory://")
    assert resolve_url(None) == "memory://"
    assert resolve_url("sqlite:///given.db") == "sqlite:///given.db"


def test_sqlite_urls_take_relative_and_absolute_paths(tmp_path: Path) -> None:
    relative = storage_for("sqlite:///ledger.db")
    absolute = storage_for(f"sqlite:///{tmp_path}/ledger.db")

    assert relative.settings["SQLITE_DBNAME"] == "ledger.db"
    assert absolute.settings["SQLITE_DBNAME"] == f"{tmp_path}/ledger.db"
    assert absolute.settings["PERSISTENCE_MODULE"] == "eventsourcing.sqlite"


def test_a_sqlite_file_is_in_wal_mode(tmp_path: Path) -> None:
    with ContextLedger.open(f"sqlite:///{tmp_path}/wal.db") as ledger:
        ledger.open_context("alice", "t")
    with sqlite3.connect(tmp_path / "wal.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_postgres_url_parts_become_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    storage = storage_for(
        "postgresql://app:s%40cret@db.internal:6543/ctx?schema=ledger"
    )

    assert storage.settings["POSTGRES_HOST"] == "db.internal"
    assert storage.settings["POSTGRES_PORT"] == "6543"
    assert storage.settings["POSTGRES_USER"] == "app"
    assert storage.settings["POSTGRES_PASSWORD"] == "s@cret"
    assert storage.settings["POSTGRES_DBNAME"] == "ctx"
    assert storage.settings["POSTGRES_SCHEMA"] == "ledger"


def test_postgres_password_comes_from_pgpassword_when_the_url_has_none(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGPASSWORD", "from-env")

    assert storage_for("postgresql://app@db/ctx").settings["POSTGRES_PASSWORD"] == (
        "from-env"
    )
    assert storage_for("postgres://app:url@db/ctx").settings["POSTGRES_PASSWORD"] == (
        "url"
    )


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("mysql://root@localhost/db", "unsupported database URL"),
        ("ctxledger.db", "unsupported database URL"),
        ("sqlite://", "has no file path"),
        ("sqlite:///no/such/folder/ledger.db", "does not exist"),
        ("postgresql://127.0.0.1/test", "needs a user and a database"),
        ("postgresql://postgres@127.0.0.1/", "needs a user and a database"),
        (
            "postgresql://postgres@127.0.0.1/test?schema=a-b",
            "lower-case SQL identifier",
        ),
        (
            "postgresql://postgres@127.0.0.1/test?schema=Mixed",
            "lower-case SQL identifier",
        ),
        ("sqlite:///ledger.db?timeout=0", "whole number of seconds"),
        ("sqlite:///ledger.db?mode=ro", "unknown SQLite URL option"),
        ("", "unsupported database URL"),
        ("postgresql://postgres@127.0.0.1/test?sslmode=off", "unknown PostgreSQL URL"),
        ("postgresql://postgres@127.0.0.1:port/test", "port"),
    ],
)
def test_bad_urls_are_configuration_errors(url: str, problem: str) -> None:
    with pytest.raises(LedgerConfigError, match=problem):
        ContextLedger.open(url)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:hunter2@127.0.0.1/",
        "postgresql://app:hunter2@127.0.0.1:port/test",
        "postgresql://app:hunter2@127.0.0.1:1/test",
    ],
)
def test_a_password_is_never_shown_in_an_error(url: str) -> None:
    with pytest.raises((LedgerConfigError, StorageUnavailable)) as error:
        ContextLedger.open(url)

    assert "127.0.0.1" in str(error.value)
    assert "hunter2" not in str(error.value)


def test_an_unreachable_server_is_storage_unavailable() -> None:
    with pytest.raises(StorageUnavailable, match=r"database \(postgresql 127.0.0.1:1"):
        ContextLedger.open("postgresql://postgres@127.0.0.1:1/test")


def test_eventsourcing_environment_variables_do_not_reconfigure_the_ledger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERSISTENCE_MODULE", "eventsourcing.popo")
    monkeypatch.setenv("CTXLEDGER_PERSISTENCE_MODULE", "eventsourcing.popo")
    url = f"sqlite:///{tmp_path}/ledger.db"

    with ContextLedger.open(url) as ledger:
        ledger.open_context("alice", "t")
    with ContextLedger.open(url) as reopened:
        assert len(reopened.history("alice")) == 1


@pytest.mark.parametrize("bad", [5, b"sqlite:///x.db", ["memory://"]])
def test_a_url_that_is_not_a_string_is_a_configuration_error(bad: object) -> None:
    with pytest.raises(LedgerConfigError, match="not a str"):
        ContextLedger.open(bad)  # type: ignore[arg-type]


@pytest.mark.postgres
def test_a_schema_dropped_under_an_open_ledger_is_storage_unavailable(
    postgres_url: str, postgres_dsn: str
) -> None:
    schema = postgres_url.rsplit("schema=", 1)[1]
    with ContextLedger.open(postgres_url) as ledger:
        ledger.open_context("alice", "t")
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')

        with pytest.raises(StorageUnavailable, match="does not exist"):
            ledger.open_context("alice", "u")


@pytest.mark.parametrize(
    "url",
    [
        "postgresql:/postgres:S3cretPW@127.0.0.1/test",
        "postgresql:postgres:S3cretPW@127.0.0.1/test",
        "postgresql://postgres:S3cretPW/test",
        "postgresql://postgres:S3cretPW@127.0.0.1:99999/test",
        "postgresql://postgres:123456/db",
        "sqlite://user:S3cretPW@host/db",
        "postgresql://host/db?password=S3cretPW",
    ],
)
def test_a_password_never_shows_in_the_error_of_a_malformed_url(url: str) -> None:
    with pytest.raises(LedgerError) as caught:
        ContextLedger.open(url)

    assert "S3cretPW" not in str(caught.value)
    assert "123456" not in str(caught.value)


@pytest.mark.postgres
def test_project_follow_does_not_print_the_password(
    postgres_url: str, tmp_path: Path
) -> None:
    with_password = postgres_url.replace("postgres@", "postgres:S3cretPW@", 1)
    worker = subprocess.Popen(
        [CTXLEDGER, "--db", with_password, "project", "--follow"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert worker.stderr is not None
    first = worker.stderr.readline()  # "following ...": the handler is set by now
    worker.send_signal(signal.SIGTERM)
    out, rest = worker.communicate(timeout=30)
    err = first + rest

    assert "following postgresql://postgres:***@" in err
    assert "S3cretPW" not in out + err


@pytest.mark.postgres
def test_demo_does_not_print_the_password(postgres_url: str, tmp_path: Path) -> None:
    with_password = postgres_url.replace("postgres@", "postgres:S3cretPW@", 1)

    done = run(
        "--db",
        with_password,
        "demo",
        "--users",
        "2",
        "--threads",
        "1",
        "--messages",
        "6",
        cwd=tmp_path,
    )

    assert done.returncode == 0, done.stderr
    assert "S3cretPW" not in done.stdout + done.stderr
    assert "postgres:***@" in done.stdout


PASSWORD = "hunter2"


# Database URLs: every malformed one is a LedgerConfigError that names the problem.

BAD_URLS = [
    ("postgresql://postgres@[::1/test", "IPv6 host needs both brackets"),
    ("postgresql://postgres@ex\uff0fample/test", "Unicode normalization"),
    ("sqlite:///a%00b.db", "holds a NUL character"),
    ("sqlite:///a.db?timeout=\u00b2", "whole number of seconds"),
    ("sqlite:///a.db?timeout=99999999999999999999", "at most 86400"),
    ("sqlite:///" + "a" * 5000 + "/x.db", "cannot be used: File name too long"),
    ("postgresql://postgres@127.0.0.1/te%00st", "database name .* NUL character"),
    ("postgresql://po%00stgres@127.0.0.1/test", "user .* NUL character"),
    ("postgresql://postgres@127.0.0.1/test?host=/tmp%00x", "host .* NUL character"),
    ("postgresql://postgres@12%00/test", "host .* NUL character"),
    ("postgresql://postgres@127.0.0.1:99999/test", "not a number from 1 to 65535"),
    ("postgresql://postgres@127.0.0.1:abc/test", "not a number from 1 to 65535"),
    ("postgresql://postgres@127.0.0.1:0/test", "not a number from 1 to 65535"),
    ("postgresql://postgres@127.0.0.1:/test", "not a number from 1 to 65535"),
    ("postgresql://postgres@/test", "has no host"),
    ("postgresql://postgres@:5432/test", "has no host"),
    ("postgresql://postgres@127.0.0.1/test#x", "has a '@' after its host, or a '#'"),
    ("postgresql://postgres@127.0.0.1/test?pool_size=10001", "at most 1000"),
    ("postgresql://postgres@127.0.0.1/test?pool_timeout=" + "9" * 30, "at most 86400"),
    ("mysql://root@localhost/db", "unsupported database URL"),
    ("SQLITE", "unsupported database URL"),
]


@pytest.mark.parametrize(("url", "problem"), BAD_URLS)
def test_a_malformed_url_is_a_configuration_error(url: str, problem: str) -> None:
    with pytest.raises(LedgerConfigError, match=problem):
        ContextLedger.open(url)
    with pytest.raises(LedgerConfigError, match=problem):
        Projections.open(url)


@pytest.mark.parametrize("url", [3, b"sqlite:///x.db", ["memory://"], 1.5])
def test_a_url_that_is_not_a_str_is_a_configuration_error(url: object) -> None:
    with pytest.raises(LedgerConfigError, match="is not a str; pass a database URL"):
        Projections.open(url)  # type: ignore[arg-type]
    with pytest.raises(LedgerConfigError, match="is not a str; pass a database URL"):
        ContextLedger.open(url)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app:{PASSWORD}@[::1/test",
        f"postgresql://app:{PASSWORD}@ex\uff0fample/test",
        f"postgresql://app:hun/ter2@127.0.0.1/test?x={PASSWORD}@",
        "postgresql://app:hun/ter2@127.0.0.1/test",
        "postgresql://app:hun?ter2@127.0.0.1/test",
        "postgresql://app:hun#ter2@127.0.0.1/test",
        "postgresql://app:hunter2%00@127.0.0.1/test",
        f"postgresql://app:{PASSWORD}@127.0.0.1:99999/test",
        f"postgresql://app:{PASSWORD}@/test",
        f"postgresql://app:{PASSWORD}@127.0.0.1/t%00",
        f"mysql://app:{PASSWORD}@[::1/test",
        f"postgresql://app:{PASSWORD}@127.0.0.1/test\x00",
    ],
)
def test_a_password_in_a_malformed_url_is_shown_as_stars(url: str) -> None:
    with pytest.raises(LedgerConfigError) as caught:
        ContextLedger.open(url)

    message = str(caught.value)
    assert "***" in message
    for piece in (PASSWORD, "hun", "ter2"):
        assert piece not in message


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("postgresql://postgres:hunter2@[::1/test", "IPv6 host"),
        ("sqlite:///a%00b.db", "NUL character"),
        ("postgresql://postgres@127.0.0.1:99999/test", "1 to 65535"),
        ("postgresql://postgres@/test", "has no host"),
        ("ftp://x", "unsupported database URL"),
    ],
)
@pytest.mark.parametrize("given", ["--db", "CTXLEDGER_URL"])
@pytest.mark.parametrize(
    "command",
    [
        ("status",),
        ("history", "alice"),
        ("audit", "alice", "--as-of", "2026-01-01T00:00:00Z"),
        ("export", "alice", "--out", "a.jsonl"),
        ("report", "alice", "--out", "a.html"),
    ],
    ids=["status", "history", "audit-as-of", "export", "report"],
)
def test_the_cli_refuses_a_malformed_url_in_one_line(
    tmp_path: Path, url: str, problem: str, given: str, command: tuple[str, ...]
) -> None:
    environment = {k: v for k, v in os.environ.items() if k != "CTXLEDGER_URL"}
    if given == "--db":
        args = [CTXLEDGER, "--db", url, *command]
    else:
        args, environment["CTXLEDGER_URL"] = [CTXLEDGER, *command], url

    result = subprocess.run(
        args,
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 1
    assert problem in one_line_error(result, "LedgerConfigError")
    assert "hunter2" not in result.stderr
    assert list(tmp_path.iterdir()) == []
