"""Readers open a ledger with create=False: no ledger there is an error, and nothing
is created to find that out."""

from pathlib import Path

import pytest

from ledger import ContextLedger, LedgerNotFound, StorageUnavailable
from projections import Projections
from tests.helpers import schema_exists


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
    with Projections.open(durable_url, create=False) as views:
        views.catch_up()
        active = views.active_contexts("alice")

    assert found == context
    assert [c.context_id for c in active] == [context.context_id]


def test_an_unreachable_server_is_unavailable_not_missing() -> None:
    url = "postgresql://postgres@127.0.0.1:1/test"

    with pytest.raises(StorageUnavailable) as caught:
        ContextLedger.open(url, create=False)

    assert "write" not in str(caught.value)
    assert not caught.value.writing
