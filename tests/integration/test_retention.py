"""Retention: ``forget_inactive`` and ``ctxledger forget --inactive-since`` forget
the users idle since a time, leave one who wrote after the listing, and go on past a
damaged user. On SQLite and PostgreSQL (and memory)."""

from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time

from ledger import ContextLedger, InvalidContextInput, LedgerCorrupted
from ledger._domain.contexts import UserContexts
from tests.helpers import OpenLedger, cli_on
from tests.tampering import execute_sql, stream_key

SECRET = "erase-me-4f1c9b"


def test_forget_inactive_forgets_only_users_idle_since(open_ledger: OpenLedger) -> None:
    ledger = open_ledger()
    with freeze_time("2026-01-01T00:00:00Z"):
        ledger.open_context("idle", "t1", metadata={"name": SECRET})
        ledger.open_context("gone", "t1", metadata={"name": SECRET})
        ledger.forget_user("gone")
    with freeze_time("2026-06-01T00:00:00Z"):
        ledger.open_context("busy", "t1", metadata={"name": "keep"})
    cutoff = datetime(2026, 3, 1, tzinfo=UTC)
    assert ledger.inactive_users(cutoff) == ["idle"]

    with freeze_time("2026-06-02T00:00:00Z"):
        assert ledger.forget_inactive(cutoff) == {"idle": 1}

    assert ledger.history("idle")[-1].kind == "forgotten"
    assert "retention" in ledger.history("idle")[-1].details["reason"]
    assert not ledger.history("busy")[-1].erased
    assert ledger.inactive_users(cutoff) == []
    with pytest.raises(InvalidContextInput):
        ledger.forget_inactive(datetime(2026, 3, 1))  # naive  # noqa: DTZ001


def test_cli_forget_inactive_since(durable_url: str) -> None:
    with ContextLedger.open(durable_url) as ledger:
        ledger.open_context("alice", "t1", metadata={"name": SECRET})
    future = (datetime.now(tz=UTC) + timedelta(days=1)).isoformat()
    past = "2000-01-01T00:00:00Z"

    nothing = cli_on("forget", "--inactive-since", past, "--yes", url=durable_url)
    assert nothing.returncode == 0
    assert "nothing to forget" in nothing.stdout
    done = cli_on("forget", "--inactive-since", future, url=durable_url, stdin="y\n")
    assert done.returncode == 0, done.stderr
    assert "forgot 1 user(s); 1 event(s) erased in all" in done.stdout
    with ContextLedger.open(durable_url) as ledger:
        assert ledger.history("alice")[0].erased


def test_retention_leaves_a_user_who_became_active_after_the_listing() -> None:
    """The check runs on the stored state inside the command: a user listed as
    inactive who wrote since is not forgotten (``forget_inactive`` relies on it)."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    aggregate = UserContexts.start("bob", start)
    aggregate.open(
        "t1",
        run_id=None,
        metadata={},
        ttl_seconds=None,
        default_ttl_seconds=None,
        now=start + timedelta(days=10),  # active after the cutoff below
        limit=10,
    )
    cutoff = start + timedelta(days=5)

    assert not aggregate.forget(reason="retention", now=start, inactive_since=cutoff)
    assert aggregate.forget(
        reason="retention", now=start, inactive_since=cutoff + timedelta(days=30)
    )
    assert aggregate.pending[-1].KIND == "forgotten"


def test_retention_goes_on_past_a_damaged_user(durable_url: str) -> None:
    with ContextLedger.open(durable_url) as ledger:
        for user in ("alice", "bob", "carol"):
            ledger.open_context(user, "t1", metadata={"name": SECRET})
        ledger.open_context("alice", "t1", metadata={"n": 2})
    execute_sql(  # alice's first event is damaged; her last one still says when
        durable_url,
        "UPDATE {events} SET state = {c1} WHERE originator_id = {p} "
        "AND originator_version = 1",
        (stream_key(durable_url, "alice"),),
    )
    future = datetime.now(tz=UTC) + timedelta(days=1)
    with ContextLedger.open(durable_url) as ledger:
        with pytest.raises(LedgerCorrupted) as raised:
            ledger.forget_inactive(future)
        assert "forgot 2 other user(s)" in " ".join(raised.value.__notes__)
        assert ledger.history("bob")[-1].kind == "forgotten"
        assert ledger.history("carol")[-1].kind == "forgotten"
