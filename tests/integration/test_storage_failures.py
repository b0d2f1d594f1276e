"""Database failures become StorageUnavailable in every public method; only a
failed write says that it appended nothing."""

import sqlite3
from pathlib import Path

import psycopg
import pytest

from ledger import ContextLedger, StorageUnavailable
from projections import Projections
from tests.tampering import execute_sql


def test_a_locked_sqlite_file_is_unavailable_and_the_write_appended_nothing(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'locked.db'}?timeout=1"
    with ContextLedger.open(url) as ledger:
        ledger.open_context("alice", "t")
        blocker = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")  # holds the write lock; readers go on
        try:
            with pytest.raises(StorageUnavailable) as caught:
                ledger.open_context("alice", "u")
            history = ledger.history("alice")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()

    assert caught.value.writing
    assert "database is locked" in str(caught.value)
    assert "the failed write appended nothing" in str(caught.value)
    assert [event.kind for event in history] == ["created"]


@pytest.mark.postgres
@pytest.mark.parametrize(
    "read",
    [
        lambda ledger: ledger.history("alice"),
        lambda ledger: ledger.active_contexts("alice"),
        lambda ledger: ledger.verify_chain(),
        lambda ledger: ledger.chain_size(),
        lambda ledger: ledger.context_history("alice", "c"),
    ],
    ids=["history", "active_contexts", "verify_chain", "chain_size", "context"],
)
def test_a_failed_read_is_unavailable_and_says_nothing_of_writes(
    postgres_url: str, postgres_dsn: str, read: object
) -> None:
    schema = postgres_url.rsplit("schema=", 1)[1]
    with ContextLedger.open(postgres_url) as ledger:
        ledger.open_context("alice", "t")
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')

        with pytest.raises(StorageUnavailable, match="does not exist") as caught:
            read(ledger)  # type: ignore[operator]

    assert not caught.value.writing
    assert "write" not in str(caught.value)


@pytest.mark.postgres
def test_a_failed_view_read_is_unavailable(
    postgres_url: str, postgres_dsn: str
) -> None:
    schema = postgres_url.rsplit("schema=", 1)[1]
    with ContextLedger.open(postgres_url) as ledger:
        ledger.open_context("alice", "t")
    with Projections.open(postgres_url) as views:
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')

        with pytest.raises(StorageUnavailable, match="does not exist"):
            views.status()


@pytest.mark.postgres
def test_a_store_without_the_append_function_says_how_to_install_it(
    postgres_url: str,
) -> None:
    schema = postgres_url.rsplit("schema=", 1)[1]
    with ContextLedger.open(postgres_url) as ledger:
        ledger.open_context("alice", "t")
    for function in ("ctxledger_events_append", "ctxledger_events_append_one"):
        execute_sql(postgres_url, f'DROP FUNCTION "{schema}".{function}')

    with (
        ContextLedger.open(postgres_url, create=False) as reader,
        pytest.raises(StorageUnavailable, match="open it once with create=True"),
    ):
        reader.open_context("alice", "u")
    with ContextLedger.open(postgres_url) as ledger:  # installs it again
        ledger.open_context("alice", "u")
        history = ledger.history("alice")

    assert [event.thread_id for event in history] == ["t", "u"]
