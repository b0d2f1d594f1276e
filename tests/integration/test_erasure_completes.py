"""An erasure cut short between its ``forgotten`` event and the destruction of the
keys it retires is finished later, reported by verify_chain until then, and never
skipped by retention.

The cut is real: the database refuses to delete key rows (a trigger that raises,
as a full disk does), or the erasing process is killed with SIGKILL while the
database holds its key deletion (a trigger that sleeps, PostgreSQL).
"""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from eventsourcing.persistence import PersistenceError
from freezegun import freeze_time

from ledger import ConcurrencyConflict, ContextLedger, StorageUnavailable
from tests.helpers import cli_on, dsn_and_schema, execute_sql

START = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
SECRET = {"card": "4111-1111"}
REFUSED = (StorageUnavailable, PersistenceError)
"""A refused write: PostgreSQL's error is typed; a SQLite trigger's RAISE is a
constraint error, which reaches the caller as the library's IntegrityError."""


def _key_rows(url: str) -> list[tuple[int, int]]:
    """(generation, destroyed) of every user key row."""
    rows = execute_sql(
        url,
        "SELECT generation, destroyed FROM ctxledger_keys WHERE generation >= 0 "
        "ORDER BY generation",
    )
    return [(int(generation), int(destroyed)) for generation, destroyed in rows]


def _block_key_deletion(url: str, how: str) -> None:
    """Makes the database refuse (``raise``) or hold (``sleep``) any deletion of
    a key row."""
    if url.startswith("sqlite:///"):
        execute_sql(
            url,
            "CREATE TRIGGER block_keys BEFORE DELETE ON ctxledger_keys "
            "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END",
        )
        return
    body = (
        "RAISE EXCEPTION 'could not extend file: No space left on device'"
        if how == "raise"
        else "PERFORM pg_sleep(3600)"
    )
    execute_sql(
        url,
        "CREATE FUNCTION block_keys() RETURNS trigger LANGUAGE plpgsql AS "
        f"$$ BEGIN {body}; RETURN OLD; END $$",
    )
    execute_sql(
        url,
        "CREATE TRIGGER block_keys BEFORE DELETE ON ctxledger_keys "
        "FOR EACH ROW EXECUTE FUNCTION block_keys()",
    )


def _unblock(url: str) -> None:
    if url.startswith("sqlite:///"):
        execute_sql(url, "DROP TRIGGER block_keys")
    else:
        execute_sql(url, "DROP TRIGGER block_keys ON ctxledger_keys")


def _cut_short_erasure(url: str) -> None:
    """Ann's erasure: its forgotten event is stored, its key deletion refused."""
    with ContextLedger.open(url) as ledger, freeze_time(START):
        ledger.open_context("ann", "t1", metadata=SECRET)
        ledger.open_context("bob", "t1", metadata=SECRET)
    _block_key_deletion(url, "raise")
    with (
        ContextLedger.open(url) as ledger,
        freeze_time(START + timedelta(days=1)),
        pytest.raises(REFUSED, match=r"full|No space"),
    ):
        ledger.forget_user("ann")
    _unblock(url)


def _erased(ledger: ContextLedger, user: str) -> bool:
    created = ledger.history(user)[0]
    return created.erased and created.details.get("metadata") is None


def _pending(url: str) -> list[str]:
    with ContextLedger.open(url, create=False) as reader:
        report = reader.verify_chain()
    return [
        u.user_id
        for u in report.broken
        if u.fault and u.fault.fault == "erasure-pending"
    ]


def test_an_erasure_cut_short_is_reported_until_finished(durable_url: str) -> None:
    _cut_short_erasure(durable_url)

    assert _pending(durable_url) == ["ann"]
    with ContextLedger.open(durable_url, create=False) as reader:
        assert reader.history("ann")[-1].kind == "forgotten"
        assert not _erased(reader, "ann")  # the data is still readable: pending
        one = reader.verify_chain("ann").users[0]
    assert one.fault is not None
    assert one.fault.fault == "erasure-pending"
    assert "forget" in one.fault.detail


FINISHERS: dict[str, Callable[[ContextLedger], object]] = {
    "opening the ledger": lambda ledger: None,
    "forget_user": lambda ledger: ledger.forget_user("ann"),
    "forget_inactive": lambda ledger: ledger.forget_inactive(START),
    "expire_due": lambda ledger: ledger.expire_due(),
}


@pytest.mark.parametrize("finisher", FINISHERS, ids=list(FINISHERS))
def test_an_erasure_cut_short_is_finished_by_the_next_sweep(
    durable_url: str, finisher: str
) -> None:
    _cut_short_erasure(durable_url)

    with ContextLedger.open(durable_url) as ledger:
        FINISHERS[finisher](ledger)

    with ContextLedger.open(durable_url, create=False) as reader:
        assert _erased(reader, "ann")
        assert not _erased(reader, "bob")
        assert [e.kind for e in reader.history("ann")].count("forgotten") == 1
        assert reader.verify_chain().holds


def test_retention_lists_a_user_whose_erasure_is_pending(durable_url: str) -> None:
    _cut_short_erasure(durable_url)
    # An erasure left pending without a mark (as a release before marks did).
    execute_sql(durable_url, "DELETE FROM ctxledger_erasures")

    with ContextLedger.open(durable_url) as ledger:
        listed = ledger.inactive_users(START - timedelta(days=30))
        forgotten = ledger.forget_inactive(START - timedelta(days=30))
        erased = _erased(ledger, "ann")

    assert listed == ["ann"]
    assert list(forgotten) == ["ann"]
    assert erased
    assert _pending(durable_url) == []


def _events_table(url: str) -> str:
    return "stored_events" if url.startswith("sqlite") else "ctxledger_events"


def _block_appends(url: str) -> None:
    """Makes the database refuse every new event, as a full disk does."""
    table = _events_table(url)
    if url.startswith("sqlite:///"):
        execute_sql(
            url,
            f"CREATE TRIGGER block_events BEFORE INSERT ON {table} "
            "BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END",
        )
        return
    execute_sql(
        url,
        "CREATE OR REPLACE FUNCTION block_events() RETURNS trigger LANGUAGE plpgsql "
        "AS $$ BEGIN RAISE EXCEPTION 'No space left on device'; END $$",
    )
    execute_sql(
        url,
        f"CREATE TRIGGER block_events BEFORE INSERT ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION block_events()",
    )


def _unblock_appends(url: str) -> None:
    on = "" if url.startswith("sqlite") else f" ON {_events_table(url)}"
    execute_sql(url, "DROP TRIGGER block_events" + on)


def _forget_refused(ledger: ContextLedger, user: str) -> None:
    # SQLite's trigger refuses with a constraint error, which reads as another
    # writer's append: retried, then ConcurrencyConflict (not applied).
    with pytest.raises(
        (StorageUnavailable, ConcurrencyConflict), match=r"No space|not applied"
    ):
        ledger.forget_user(user)


def _marks(url: str) -> list[tuple[int, int]]:
    return [
        (int(below), int(version))
        for below, version in execute_sql(
            url, "SELECT below, version FROM ctxledger_erasures ORDER BY below"
        )
    ]


def test_an_erasure_whose_event_was_never_stored_leaves_the_data(
    durable_url: str,
) -> None:
    """A failed append erases nothing; its mark stays while its version is free
    and is dropped, destroying nothing, once another event takes the version."""
    with ContextLedger.open(durable_url) as ledger:
        ledger.open_context("ann", "t1", metadata=SECRET)
    _block_appends(durable_url)
    with ContextLedger.open(durable_url) as ledger:
        _forget_refused(ledger, "ann")
    _unblock_appends(durable_url)

    with ContextLedger.open(durable_url) as ledger:
        assert _marks(durable_url) == [(1, 2)]
        assert not _erased(ledger, "ann")
        assert ledger.active_contexts("ann")[0].metadata == SECRET
        ledger.open_context("ann", "t2", metadata=SECRET)  # takes version 2
    with ContextLedger.open(durable_url) as ledger:
        assert _marks(durable_url) == []
        assert ledger.active_contexts("ann")[0].metadata == SECRET
        assert ledger.verify_chain().holds


def test_a_failed_second_erasure_does_not_hide_an_unfinished_first(
    durable_url: str,
) -> None:
    """The first erasure is recorded but its key survives; the user writes again
    under the next key; a second erasure's append fails. The next opening still
    finishes the first (each erasure has its own mark) and leaves the second
    period's data, which no erasure was recorded for."""
    with ContextLedger.open(durable_url) as ledger:
        ledger.open_context("ann", "t1", metadata=SECRET)
        _block_key_deletion(durable_url, "raise")
        with pytest.raises(REFUSED, match=r"full|No space"):
            ledger.forget_user("ann")
        _unblock(durable_url)
        ledger.open_context("ann", "t2", metadata={"period": "second"})
        _block_appends(durable_url)
        _forget_refused(ledger, "ann")
        _unblock_appends(durable_url)
    assert _marks(durable_url) == [(1, 2), (2, 4)]
    assert _pending(durable_url) == ["ann"]

    with ContextLedger.open(durable_url) as ledger:
        first, _, second = ledger.history("ann")
        active = ledger.active_contexts("ann")

    assert first.erased
    assert not second.erased
    assert active[0].metadata == {"period": "second"}
    assert _marks(durable_url) == [(2, 4)]
    assert _pending(durable_url) == []


_ERASER = """
import sys
from ledger import ConcurrencyConflict, ContextLedger, StorageUnavailable
with ContextLedger.open(sys.argv[1]) as ledger:
    ledger.forget_user("ann")
"""


@pytest.mark.postgres
def test_an_erasure_killed_between_its_writes_is_finished_on_opening(
    postgres_url: str, tmp_path: Path
) -> None:
    with ContextLedger.open(postgres_url) as ledger:
        ledger.open_context("ann", "t1", metadata=SECRET)
    _block_key_deletion(postgres_url, "sleep")
    eraser = subprocess.Popen(
        [sys.executable, "-c", _ERASER, postgres_url], cwd=Path.cwd()
    )
    try:
        with ContextLedger.open(postgres_url, create=False) as reader:
            _wait(eraser, lambda: reader.history("ann")[-1].kind == "forgotten")
        _wait(eraser, lambda: _deleting_keys(postgres_url))
        os.kill(eraser.pid, signal.SIGKILL)
        eraser.wait(timeout=30)
    finally:
        if eraser.poll() is None:
            eraser.kill()
    _cancel_sleepers(postgres_url)
    _unblock(postgres_url)
    assert _pending(postgres_url) == ["ann"]

    with ContextLedger.open(postgres_url) as ledger:
        assert _erased(ledger, "ann")
        assert ledger.verify_chain().holds


def _wait(eraser: "subprocess.Popen[bytes]", condition: Callable[[], bool]) -> None:
    """Waits for ``condition`` while the eraser runs (a loaded machine may take
    seconds to start a Python process)."""
    deadline = time.monotonic() + 120
    while not condition():
        assert eraser.poll() is None, f"the eraser exited with {eraser.returncode}"
        assert time.monotonic() < deadline, "the eraser did not get there in 120 s"
        time.sleep(0.02)


def _deleting_keys(url: str) -> bool:
    dsn, schema = dsn_and_schema(url)
    with psycopg.connect(dsn, autocommit=True) as connection:
        found = connection.execute(
            "SELECT 1 FROM pg_stat_activity WHERE query LIKE %s AND state = 'active'",
            (f"%DELETE FROM%{schema}%ctxledger_keys%",),
        ).fetchone()
    return found is not None


def _cancel_sleepers(url: str) -> None:
    """Ends the killed process's transaction, still held by the server (the
    test's own backends only: their query names the test's schema)."""
    dsn, schema = dsn_and_schema(url)
    with psycopg.connect(dsn, autocommit=True) as connection:
        for _ in range(50):
            rows = connection.execute(
                "SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
                "WHERE query LIKE %s AND pid <> pg_backend_pid()",
                (f"%DELETE FROM%{schema}%ctxledger_keys%",),
            ).fetchall()
            if not rows:
                return
            time.sleep(0.1)


def test_the_cli_retention_run_finishes_a_pending_erasure(durable_url: str) -> None:
    _cut_short_erasure(durable_url)
    # Pending without a mark, as a release before marks left it.
    execute_sql(durable_url, "DELETE FROM ctxledger_erasures")
    long_ago = "2000-01-01T00:00:00Z"

    result = cli_on("forget", "--inactive-since", long_ago, "--yes", url=durable_url)

    assert result.returncode == 0, result.stderr
    assert "forgot ann: the personal data of 1 event(s) is erased" in result.stdout
    assert "forgot 1 user(s)" in result.stdout
    assert _pending(durable_url) == []
    with ContextLedger.open(durable_url, create=False) as reader:
        assert _erased(reader, "ann")
        assert not _erased(reader, "bob")
