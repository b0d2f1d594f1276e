"""Readers open a ledger with create=False: no ledger there is an error, and nothing
is created to find that out."""

import uuid
from pathlib import Path

import psycopg
import pytest

from ledger import ContextLedger, LedgerNotFound, StorageUnavailable
from projections import Projections, ViewNotBuilt
from tests.helpers import schema_exists, table_names


@pytest.mark.parametrize("opener", [ContextLedger.open, Projections.open])
def test_a_missing_sqlite_file_is_not_found_and_not_created(
    tmp_path: Path, opener: object
) -> None:
    path = tmp_path / "absent.db"

    with pytest.raises(LedgerNotFound, match=r"^no ledger at sqlite file .*absent\.db"):
        opener(f"sqlite:///{path}", create=False)  # type: ignore[operator]

    assert list(tmp_path.iterdir()) == []


def test_a_sqlite_file_of_another_program_is_not_a_ledger(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    path.write_bytes(b"")

    with pytest.raises(LedgerNotFound):
        ContextLedger.open(f"sqlite:///{path}", create=False)

    assert path.read_bytes() == b""


@pytest.mark.postgres
@pytest.mark.parametrize("opener", [ContextLedger.open, Projections.open])
def test_a_missing_postgres_schema_is_not_found_and_not_created(
    postgres_url: str, postgres_dsn: str, opener: object
) -> None:
    schema = postgres_url.rpartition("schema=")[2]

    with pytest.raises(LedgerNotFound, match=rf"^no ledger at postgresql .*{schema}"):
        opener(postgres_url, create=False)  # type: ignore[operator]

    assert not schema_exists(postgres_url)


def test_memory_never_holds_a_ledger_to_open_without_creating() -> None:
    with pytest.raises(LedgerNotFound, match="no ledger at memory"):
        ContextLedger.open("memory://", create=False)


def test_an_existing_ledger_opens_without_creating(durable_url: str) -> None:
    with ContextLedger.open(durable_url) as writer:
        context = writer.open_context("alice", "t1")

    with ContextLedger.open(durable_url, create=False) as reader:
        found = reader.get_context("alice", "t1")

    assert found == context


def test_an_unreachable_server_is_unavailable_not_missing() -> None:
    url = "postgresql://postgres@127.0.0.1:1/test"

    with pytest.raises(StorageUnavailable) as caught:
        ContextLedger.open(url, create=False)

    assert "write" not in str(caught.value)
    assert not caught.value.writing


def test_a_reader_of_views_never_built_creates_nothing_and_is_told(
    durable_url: str,
) -> None:
    with ContextLedger.open(durable_url) as ledger:
        ledger.open_context("alice", "t1")
        ledger.open_context("bob", "t1")
    before = table_names(durable_url)

    with Projections.open(durable_url, create=False) as views:
        status = views.status()
        differences = views.verify()
        with pytest.raises(ViewNotBuilt, match="the active view has not been built"):
            views.active_contexts("alice")
        with pytest.raises(ViewNotBuilt, match="run `ctxledger project`"):
            views.audit_rows("alice")

    assert [(row.position, row.lag) for row in status] == [(0, 2)] * 3
    assert all("has not been built" in found[0] for found in differences.values())
    assert table_names(durable_url) == before


def test_a_reader_of_built_views_reads_them_and_changes_no_table(
    durable_url: str,
) -> None:
    with ContextLedger.open(durable_url) as ledger:
        context = ledger.open_context("alice", "t1")
    with Projections.open(durable_url) as writer:
        writer.catch_up()
    before = table_names(durable_url)

    with Projections.open(durable_url, create=False) as views:
        active = views.active_contexts("alice")
        lags = [row.lag for row in views.status()]

    assert [c.context_id for c in active] == [context.context_id]
    assert lags == [0, 0, 0]
    assert table_names(durable_url) == before


@pytest.mark.postgres
def test_a_role_that_may_only_select_can_read_the_ledger_and_its_views(
    postgres_url: str, postgres_dsn: str
) -> None:
    schema = postgres_url.rpartition("schema=")[2]
    with ContextLedger.open(postgres_url) as ledger:
        context = ledger.open_context("alice", "t1")
    with Projections.open(postgres_url) as writer:
        writer.catch_up()
    role = f"ctxl_reader_{uuid.uuid4().hex[:10]}"
    reader_url = postgres_url.replace("://postgres@", f"://{role}@", 1)
    with psycopg.connect(postgres_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" LOGIN')
        admin.execute(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"')
        admin.execute(f'GRANT SELECT ON ALL TABLES IN SCHEMA "{schema}" TO "{role}"')
    try:
        with ContextLedger.open(reader_url, create=False) as reader:
            kinds = [event.kind for event in reader.history("alice")]
            holds = reader.verify_chain().holds
        with Projections.open(reader_url, create=False) as views:
            rows = views.audit_rows("alice")
    finally:
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            admin.execute(f'DROP OWNED BY "{role}"')
            admin.execute(f'DROP ROLE "{role}"')

    assert kinds == ["created"]
    assert holds
    assert [row.context_id for row in rows] == [context.context_id]
