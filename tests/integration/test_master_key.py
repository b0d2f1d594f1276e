"""The master key: it wraps the users' data keys; without it (or with another) a
master-keyed ledger does not open; one given later wraps the keys from then on; a
reader cannot start wrapping, and a process that meets wrapped keys stops writing
unwrapped ones. On SQLite and PostgreSQL."""

import secrets

import pytest

from ledger import ContextLedger, LedgerConfigError
from projections import Projections
from tests.tampering import execute_sql

SECRET = "erase-me-4f1c9b"
KEY_MASTER = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"


def _metadata(ledger: ContextLedger, user: str) -> dict[str, object]:
    context = ledger.get_context(user, "t1")
    assert context is not None
    return context.metadata


def test_the_master_key_wraps_the_data_keys(
    durable_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ContextLedger.open(
        durable_url, master_key=bytes.fromhex(KEY_MASTER)
    ) as ledger:
        ledger.open_context("alice", "t1", metadata={"name": SECRET})
    stored = execute_sql(
        durable_url,
        "SELECT data_key, wrapped FROM ctxledger_keys WHERE stream_id <> ''",
    )
    assert [row[1] for row in stored] == [1]
    assert len(bytes(stored[0][0])) == 12 + 32 + 16  # nonce, key, tag

    # Without it, or with another, nothing opens: neither to read nor to write
    # (a new user's key would otherwise be stored unwrapped, or wrapped wrongly).
    for options in ({}, {"create": False}, {"master_key": secrets.token_hex(32)}):
        with pytest.raises(LedgerConfigError, match="master key"):
            ContextLedger.open(durable_url, **options)
        with pytest.raises(LedgerConfigError, match="master key"):
            Projections.open(durable_url, **options)
    monkeypatch.setenv("CTXLEDGER_MASTER_KEY", KEY_MASTER)
    with ContextLedger.open(durable_url) as ledger:
        assert _metadata(ledger, "alice") == {"name": SECRET}
        ledger.open_context("bob", "t1", metadata={"name": "bob"})
        assert ledger.forget_user("alice") == 1
        assert ledger.verify_chain().holds
    wrapped = execute_sql(
        durable_url,
        "SELECT wrapped FROM ctxledger_keys WHERE stream_id <> '' AND destroyed = 0",
    )
    assert wrapped == [(1,)]  # bob's, wrapped too


def test_a_master_key_given_later_wraps_the_keys_from_then_on(
    durable_url: str,
) -> None:
    with ContextLedger.open(durable_url) as ledger:
        ledger.open_context("alice", "t1", metadata={"name": SECRET})
    with ContextLedger.open(durable_url, master_key=KEY_MASTER) as ledger:
        ledger.open_context("bob", "t1", metadata={"name": "bob"})
        assert _metadata(ledger, "alice") == {"name": SECRET}  # unwrapped, readable
    with pytest.raises(LedgerConfigError, match="master key"):
        ContextLedger.open(durable_url)
    rows = execute_sql(
        durable_url,
        "SELECT wrapped FROM ctxledger_keys WHERE stream_id <> '' ORDER BY wrapped",
    )
    assert rows == [(1,), (1,)]  # adopting the master key wrapped alice's too


@pytest.mark.parametrize("bad", ["short", "zz" * 32, b"\x00" * 31, 12345])
def test_a_malformed_master_key_is_a_config_error(bad: object) -> None:
    with pytest.raises(LedgerConfigError, match="not a key"):
        ContextLedger.open("memory://", master_key=bad)  # type: ignore[arg-type]


def test_a_reader_with_a_master_key_cannot_start_wrapping(durable_url: str) -> None:
    with ContextLedger.open(durable_url) as ledger:
        ledger.open_context("alice", "t1", metadata={"name": SECRET})
    with pytest.raises(LedgerConfigError, match="not wrapped by a master key yet"):
        ContextLedger.open(durable_url, create=False, master_key=KEY_MASTER)


def test_a_master_key_given_by_another_process_stops_unwrapped_keys(
    durable_url: str,
) -> None:
    with ContextLedger.open(durable_url) as early:
        early.open_context("alice", "t1", metadata={"name": SECRET})
        with ContextLedger.open(durable_url, master_key=KEY_MASTER) as later:
            later.open_context("bob", "t1", metadata={"name": "bob"})
        with pytest.raises(LedgerConfigError, match="master key"):
            early.open_context("carol", "t1", metadata={"name": "carol"})
        assert early.history("carol") == []
    rows = execute_sql(
        durable_url,
        "SELECT wrapped FROM ctxledger_keys WHERE stream_id <> '' ORDER BY wrapped",
    )
    assert rows == [(1,), (1,)]  # alice's wrapped when the key was adopted, bob's
