"""Key rows are bound to their user and generation and, with a master key,
authenticated by it: a row planted or altered by SQL is refused and reported,
never used; a ledger from before is migrated once, keeping its data readable."""

import secrets
from typing import Any

import pytest

from ledger import ContextLedger, LedgerConfigError, LedgerCorrupted
from ledger._domain.contexts import user_aggregate_id
from ledger._store.keys import MasterKey
from tests.helpers import execute_sql

MASTER = "5a" * 32
PLANTED = bytes(range(32))  # the planter's own key, in plain form
OLD_CHECK = b"ctxledger master key check"  # the meta row as the release before wrote it
NOT_AUTHENTIC = "not authenticated by the master key"


def _stream(user: str) -> str:
    return user_aggregate_id(user).hex


def _plant(url: str, user: str, generation: int, row: tuple[bytes, int, int]) -> None:
    """Puts a row for the user's generation by SQL (replacing one that exists)."""
    execute_sql(
        url,
        "DELETE FROM ctxledger_keys WHERE stream_id = {p} AND generation = {p}",
        (_stream(user), generation),
    )
    execute_sql(
        url,
        "INSERT INTO ctxledger_keys (stream_id, generation, data_key, wrapped, "
        "destroyed) VALUES ({p}, {p}, {p}, {p}, {p})",
        (_stream(user), generation, *row),
    )


def _row(url: str, user: str, generation: int) -> tuple[bytes, int, int]:
    rows = execute_sql(
        url,
        "SELECT data_key, wrapped, destroyed FROM ctxledger_keys "
        "WHERE stream_id = {p} AND generation = {p}",
        (_stream(user), generation),
    )
    assert len(rows) == 1
    return bytes(rows[0][0]), int(rows[0][1]), int(rows[0][2])


def _metadata(ledger: ContextLedger, user: str) -> list[Any]:
    return [event.details.get("metadata") for event in ledger.history(user)]


Row = tuple[str, int, bool, bool | None]
"""A KeyRow as (stream hex, generation, destroyed, authentic)."""


def _rows(ledger: ContextLedger, streams: Any = None) -> list[Row]:
    rows = ledger._app.keys.key_rows(streams)
    return [(r.stream.hex, r.generation, r.destroyed, r.authentic) for r in rows]


def _rows_of(ledger: ContextLedger) -> dict[tuple[str, int], Row]:
    return {(row[0], row[1]): row for row in _rows(ledger)}


def test_a_row_planted_for_a_user_who_has_not_written_is_not_used(
    durable_url: str,
) -> None:
    with ContextLedger.open(durable_url, master_key=MASTER) as ledger:
        ledger.open_context("bob", "t1", metadata={"n": 1})
    _plant(durable_url, "alice", 0, (PLANTED, 0, 0))

    with ContextLedger.open(durable_url, master_key=MASTER) as ledger:
        ledger.open_context("alice", "t1", metadata={"name": "alice"})

        stored, wrapped, destroyed = _row(durable_url, "alice", 0)
        assert (wrapped, destroyed) == (1, 0)
        assert PLANTED not in stored
        # Sealed under the key now in the row (else it would not open).
        assert _metadata(ledger, "alice") == [{"name": "alice"}]
        assert _metadata(ledger, "bob") == [{"n": 1}]


def test_a_row_planted_for_the_next_generation_of_a_forgotten_user_is_not_used(
    durable_url: str,
) -> None:
    with ContextLedger.open(durable_url, master_key=MASTER) as ledger:
        ledger.open_context("alice", "t1", metadata={"name": "old"})
        ledger.forget_user("alice")
    _plant(durable_url, "alice", 1, (PLANTED, 0, 0))

    with ContextLedger.open(durable_url, master_key=MASTER) as ledger:
        ledger.open_context("alice", "t2", metadata={"name": "new"})

        stored, wrapped, _ = _row(durable_url, "alice", 1)
        assert wrapped == 1
        assert PLANTED not in stored
        assert _metadata(ledger, "alice")[-1] == {"name": "new"}
        assert ledger.verify_chain("alice").holds


def test_a_planted_tombstone_does_not_block_a_new_user(durable_url: str) -> None:
    with ContextLedger.open(durable_url, master_key=MASTER) as ledger:
        ledger.open_context("bob", "t1", metadata={"n": 1})
    _plant(durable_url, "alice", 0, (b"", 0, 1))

    with ContextLedger.open(durable_url, master_key=MASTER) as ledger:
        opened = ledger.open_context("alice", "t1", metadata={"name": "alice"})

        assert ledger.get_context("alice", "t1") == opened
        assert _metadata(ledger, "alice") == [{"name": "alice"}]
        assert _row(durable_url, "alice", 0)[1:] == (1, 0)


def _emptied(row: tuple[bytes, int, int]) -> tuple[bytes, int, int]:
    return (b"", 0, 1)  # a tombstone as the release before wrote it


def _flagged(row: tuple[bytes, int, int]) -> tuple[bytes, int, int]:
    return (row[0], row[1], 1)  # the key kept, only marked destroyed


def _replaced(row: tuple[bytes, int, int]) -> tuple[bytes, int, int]:
    return (PLANTED, 0, 0)  # the planter's key in plain form


@pytest.mark.parametrize("alter", [_emptied, _flagged, _replaced])
def test_an_altered_key_row_is_refused_on_read_and_other_users_go_on(
    durable_url: str, alter: Any
) -> None:
    with ContextLedger.open(durable_url, master_key=MASTER) as ledger:
        ledger.open_context("alice", "t1", metadata={"name": "alice"})
        ledger.open_context("bob", "t1", metadata={"name": "bob"})
    _plant(durable_url, "alice", 0, alter(_row(durable_url, "alice", 0)))

    with ContextLedger.open(durable_url, master_key=MASTER) as ledger:
        with pytest.raises(LedgerCorrupted, match=NOT_AUTHENTIC) as refused:
            ledger.history("alice")
        assert refused.value.user_id == "alice"
        assert "planted or altered by SQL" in str(refused.value)

        assert _metadata(ledger, "bob") == [{"name": "bob"}]
        ledger.open_context("bob", "t2", metadata={"name": "bob 2"})
        assert ledger.verify_chain("bob").holds
        assert _rows_of(ledger)[_stream("alice"), 0][3] is False


def test_a_write_keeps_a_refused_row_that_stored_values_use(durable_url: str) -> None:
    with ContextLedger.open(durable_url, master_key=MASTER) as ledger:
        ledger.open_context("alice", "t1", metadata={"name": "alice"})
    _plant(durable_url, "alice", 0, (b"", 0, 1))

    with (
        ContextLedger.open(durable_url, master_key=MASTER) as ledger,
        pytest.raises(LedgerCorrupted, match=NOT_AUTHENTIC),
    ):
        ledger.open_context("alice", "t2", metadata={"name": "again"})

    # The evidence stays for the operator to restore or investigate.
    assert _row(durable_url, "alice", 0) == (b"", 0, 1)


def test_key_rows_says_which_rows_the_master_key_vouches_for(
    durable_url: str,
) -> None:
    with ContextLedger.open(durable_url, master_key=MASTER) as ledger:
        ledger.open_context("alice", "t1", metadata={"name": "alice"})
        ledger.open_context("dave", "t1", metadata={"name": "dave"})
        ledger.forget_user("dave")
    _plant(durable_url, "mallory", 0, (PLANTED, 0, 0))
    _plant(durable_url, "mallory", 1, (b"", 0, 1))

    with ContextLedger.open(durable_url, master_key=MASTER) as ledger:
        assert ledger._app.keys.authenticated()
        rows = sorted(_rows(ledger))
        only_dave = _rows(ledger, [user_aggregate_id("dave")])

    alice, dave, mallory = _stream("alice"), _stream("dave"), _stream("mallory")
    assert rows == sorted(
        [
            (alice, 0, False, True),
            (dave, 0, True, True),
            (mallory, 0, False, False),
            (mallory, 1, True, False),
        ]
    )
    assert only_dave == [(dave, 0, True, True)]


def test_key_rows_without_a_master_key_authenticates_nothing(
    durable_url: str,
) -> None:
    with ContextLedger.open(durable_url) as ledger:
        ledger.open_context("alice", "t1", metadata={"name": "alice"})
        assert not ledger._app.keys.authenticated()
        assert [row[3] for row in _rows(ledger)] == [None]


def test_key_rows_pages_through_many_rows(durable_url: str) -> None:
    with ContextLedger.open(durable_url, master_key=MASTER) as ledger:
        ledger.open_context("alice", "t1", metadata={"name": "alice"})
    planted = [(secrets.token_hex(16), 0, PLANTED) for _ in range(4100)]
    for start in range(0, len(planted), 1000):
        chunk = planted[start : start + 1000]
        execute_sql(
            durable_url,
            "INSERT INTO ctxledger_keys (stream_id, generation, data_key, wrapped) "
            "VALUES " + ", ".join(["({p}, {p}, {p}, 0)"] * len(chunk)),
            tuple(value for row in chunk for value in row),
        )

    with ContextLedger.open(durable_url, master_key=MASTER) as ledger:
        rows = _rows(ledger)

    assert len(rows) == 4101
    assert [row[0] for row in rows] == sorted(row[0] for row in rows)
    assert sum(row[3] is False for row in rows) == 4100


def _as_the_release_before(url: str) -> None:
    """alice's key and dave's tombstone in plain form, then a master key adopted
    as the release before did it (the meta row's check only)."""
    with ContextLedger.open(url) as ledger:
        ledger.open_context("alice", "t1", metadata={"name": "alice"})
        ledger.open_context("dave", "t1", metadata={"name": "dave"})
        ledger.forget_user("dave")
    check = MasterKey(bytes.fromhex(MASTER)).wrap(b"check", OLD_CHECK)
    execute_sql(
        url,
        "UPDATE ctxledger_keys SET data_key = {p}, wrapped = 1 "
        "WHERE stream_id = '' AND generation = -1",
        (check,),
    )


def test_a_reader_of_an_unmigrated_ledger_keeps_the_old_rules(
    durable_url: str,
) -> None:
    _as_the_release_before(durable_url)

    with ContextLedger.open(durable_url, master_key=MASTER, create=False) as ledger:
        assert _metadata(ledger, "alice") == [{"name": "alice"}]
        assert ledger.history("dave")[0].erased
        ledger.open_context("bob", "t1", metadata={"name": "bob"})
        assert not ledger._app.keys.authenticated()
        rows = _rows_of(ledger)

    assert rows[_stream("alice"), 0][3] is None  # in plain form, as before
    assert rows[_stream("dave"), 0][3] is None
    assert rows[_stream("bob"), 0][3] is True
    assert _row(durable_url, "alice", 0)[1] == 0  # a reader migrates nothing


def test_opening_with_the_master_key_migrates_once_and_keeps_old_data(
    durable_url: str,
) -> None:
    _as_the_release_before(durable_url)

    with ContextLedger.open(durable_url, master_key=MASTER) as ledger:
        assert ledger._app.keys.authenticated()
        assert _metadata(ledger, "alice") == [{"name": "alice"}]
        assert ledger.history("dave")[0].erased
        assert {row[3] for row in _rows(ledger)} == {True}
        assert ledger.verify_chain().holds
    _plant(durable_url, "carol", 0, (PLANTED, 0, 0))

    with ContextLedger.open(durable_url, master_key=MASTER) as ledger:
        assert _rows_of(ledger)[_stream("carol"), 0][3] is False
        ledger.open_context("carol", "t1", metadata={"name": "carol"})
        assert _row(durable_url, "carol", 0)[1] == 1


def test_adopting_a_master_key_seals_every_existing_row(durable_url: str) -> None:
    with ContextLedger.open(durable_url) as ledger:
        ledger.open_context("alice", "t1", metadata={"name": "alice"})
        ledger.open_context("dave", "t1", metadata={"name": "dave"})
        ledger.forget_user("dave")

    with ContextLedger.open(durable_url, master_key=MASTER) as ledger:
        assert _metadata(ledger, "alice") == [{"name": "alice"}]
        assert ledger._app.keys.authenticated()

    flags = execute_sql(
        durable_url, "SELECT wrapped FROM ctxledger_keys ORDER BY stream_id"
    )
    assert flags == [(1,), (1,), (1,)]  # the meta row, alice's key, dave's tombstone
    with pytest.raises(LedgerConfigError, match="master key"):
        ContextLedger.open(durable_url)


def test_a_removed_meta_row_stops_a_master_key_from_vouching_for_planted_rows(
    durable_url: str,
) -> None:
    with ContextLedger.open(durable_url, master_key=MASTER) as ledger:
        ledger.open_context("alice", "t1", metadata={"name": "alice"})
    execute_sql(durable_url, "DELETE FROM ctxledger_keys WHERE stream_id = ''")
    _plant(durable_url, "mallory", 0, (PLANTED, 0, 0))

    for master_key in (MASTER, None):
        with pytest.raises(LedgerConfigError, match="meta row"):
            ContextLedger.open(durable_url, master_key=master_key)
    assert _row(durable_url, "mallory", 0) == (PLANTED, 0, 0)
