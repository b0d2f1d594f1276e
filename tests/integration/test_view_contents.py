"""Contract of each view, on SQLite and PostgreSQL: it answers what the ledger says,
and holds what the ledger holds (NUL characters an older release stored, numbers as
written, a second context on an active thread)."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time

from ledger import ContextLedger, InvalidContextInput
from projections import Projections, UnknownView, ViewCannotApply
from tests.tampering import (
    NUL_METADATA,
    append_raw_creation,
    execute_sql,
    store_as_an_older_release,
)

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def ledger(durable_url: str) -> Iterator[ContextLedger]:
    with ContextLedger.open(durable_url, default_ttl_seconds=600) as opened:
        yield opened


@pytest.fixture
def views(durable_url: str, ledger: ContextLedger) -> Iterator[Projections]:
    with Projections.open(durable_url, batch_size=3) as opened:
        yield opened


def record_a_day(ledger: ContextLedger) -> dict[str, str]:
    """Alice opens, reuses, updates and clears; Bob's context expires."""
    ids: dict[str, str] = {}
    with freeze_time(START) as clock:
        ids["a1"] = ledger.open_context("alice", "t1", run_id="r1").context_id
        clock.tick(60)
        ledger.open_context("alice", "t1", run_id="r2", metadata={"step": 2})
        ids["a2"] = ledger.open_context("alice", "t2", ttl_seconds=300).context_id
        ids["b1"] = ledger.open_context("bob", "t1").context_id
        clock.tick(60)
        ledger.update_context("alice", ids["a1"], metadata={"tokens": 10})
        ledger.clear_context("alice", ids["a2"])
        clock.tick(3600)
        ledger.expire_due()
        ids["b2"] = ledger.open_context("bob", "t1").context_id
    return ids


def test_active_view_holds_what_the_ledger_holds(
    ledger: ContextLedger, views: Projections
) -> None:
    ids = record_a_day(ledger)

    views.catch_up()

    with freeze_time(START + timedelta(hours=1, minutes=2)):
        expected = ledger.active_contexts("alice") + ledger.active_contexts("bob")
    assert views.active_contexts("alice") + views.active_contexts("bob") == expected
    assert [c.context_id for c in views.active_contexts()] == [ids["b2"]]
    assert views.active_context(ids["b1"]) is None
    assert views.count_active() == 1
    assert views.count_active("alice") == 0


def test_active_view_finds_contexts_expiring_before_a_time(
    ledger: ContextLedger, views: Projections
) -> None:
    with freeze_time(START):
        short = ledger.open_context("alice", "t1", ttl_seconds=60)
        ledger.open_context("alice", "t2", ttl_seconds=7200)
    views.catch_up()

    due = views.expiring_before(START + timedelta(minutes=5))

    assert [c.context_id for c in due] == [short.context_id]
    assert due[0].metadata == {}
    assert due[0].reuse_count == 0


def test_audit_view_has_one_row_per_event_in_ledger_order(
    ledger: ContextLedger, views: Projections
) -> None:
    record_a_day(ledger)

    views.catch_up()

    rows = views.audit_rows("alice")
    history = ledger.history("alice")
    assert [(r.kind, r.context_id, r.occurred_at) for r in rows] == [
        (e.kind, e.context_id, e.occurred_at) for e in history
    ]
    assert [r.details for r in rows] == [e.details for e in history]
    positions = [r.position for r in views.audit_rows()]
    assert positions == sorted(positions)
    assert len(positions) == views.head()


def test_audit_view_filters_by_period_and_kind(
    ledger: ContextLedger, views: Projections
) -> None:
    record_a_day(ledger)
    views.catch_up()

    first_minute = views.audit_rows(since=START, until=START + timedelta(minutes=1))
    expiries = views.audit_rows(kind="expired")
    bobs_creations = views.audit_rows("bob", kind="created")

    assert [(r.user_id, r.kind) for r in first_minute] == [("alice", "created")]
    assert {(r.user_id, r.details["reason"]) for r in expiries} == {
        ("alice", "ttl"),
        ("bob", "ttl"),
    }
    assert len(bobs_creations) == 2


def test_audit_view_refuses_a_naive_time_or_unknown_kind(views: Projections) -> None:
    with pytest.raises(InvalidContextInput, match=r"since=.*timezone-aware"):
        views.audit_rows(since=datetime(2026, 1, 1))  # noqa: DTZ001
    with pytest.raises(InvalidContextInput, match="kind='opened'"):
        views.audit_rows(kind="opened")  # type: ignore[arg-type]


def test_continuity_view_counts_per_user_and_in_total(
    ledger: ContextLedger, views: Projections
) -> None:
    record_a_day(ledger)

    views.catch_up()

    alice, bob, total = (
        views.continuity("alice"),
        views.continuity("bob"),
        views.continuity(),
    )
    assert (alice.created, alice.reused, alice.updated, alice.cleared) == (2, 1, 1, 1)
    assert (alice.never_reused, alice.reuses_per_created) == (1, 0.5)
    assert (bob.created, bob.expired, bob.never_reused) == (2, 1, 2)
    assert (total.users, total.created, total.threads_with_overlap) == (2, 4, 0)
    assert total.reuses_per_created == 0.25


def test_continuity_of_an_unknown_user_is_all_zero(views: Projections) -> None:
    figures = views.continuity("nobody")

    assert (figures.users, figures.created, figures.reuses_per_created) == (0, 0, None)


def test_an_unknown_view_name_is_refused(views: Projections) -> None:
    with pytest.raises(UnknownView, match="no view 'sessions'; the views are active"):
        views.rebuild(["sessions"])


def test_views_catch_up_from_where_they_stopped(
    ledger: ContextLedger, views: Projections
) -> None:
    ledger.open_context("alice", "t1")
    first = views.catch_up()
    ledger.open_context("alice", "t1")
    ledger.open_context("alice", "t2")

    second = views.catch_up()

    assert first == {"active": 1, "audit": 1, "continuity": 1}
    assert second == {"active": 2, "audit": 2, "continuity": 2}
    assert [s.lag for s in views.status()] == [0, 0, 0]
    assert views.verify() == {"active": [], "audit": [], "continuity": []}


# Values that any release could store.

EQUAL: dict[str, list[str]] = {"active": [], "audit": [], "continuity": []}


def test_views_hold_nul_characters_in_metadata_and_reasons_as_the_ledger_does(
    durable_url: str, ledger: ContextLedger, views: Projections
) -> None:
    store_as_an_older_release(durable_url, "alice")

    applied = views.catch_up()

    assert applied == {"active": 3, "audit": 3, "continuity": 3}
    assert views.active_contexts("alice") == ledger.active_contexts("alice")
    assert views.active_contexts("alice")[0].metadata == NUL_METADATA
    assert [row.details for row in views.audit_rows("alice")] == [
        event.details for event in ledger.history("alice")
    ]
    assert views.verify() == EQUAL


def test_a_rebuild_holds_nul_characters_as_the_ledger_does(
    durable_url: str, ledger: ContextLedger, views: Projections
) -> None:
    store_as_an_older_release(durable_url, "alice")

    applied = views.rebuild()

    assert applied == {"active": 3, "audit": 3, "continuity": 3}
    assert views.audit_rows("alice")[-1].details["reason"] == "bye\x00"
    assert views.verify() == EQUAL


def test_views_keep_numbers_in_metadata_as_written(
    ledger: ContextLedger, views: Projections
) -> None:
    numbers = {"huge": 1e308, "whole": 1e16, "tiny": 5e-324, "int": 2**63 - 1}
    ledger.open_context("alice", "t1", metadata=numbers)

    views.catch_up()

    stored = views.active_contexts("alice")[0].metadata
    assert [(value, type(value)) for value in stored.values()] == [
        (value, type(value)) for value in numbers.values()
    ]
    assert views.verify() == EQUAL


@pytest.mark.postgres
def test_an_older_jsonb_view_names_what_it_cannot_hold_and_a_rebuild_repairs_it(
    postgres_url: str,
) -> None:
    """Views built by an older release keep jsonb columns until rebuilt."""
    with (
        ContextLedger.open(postgres_url) as ledger,
        Projections.open(postgres_url) as views,
    ):
        ledger.open_context("bob", "t1")
        views.catch_up()
        execute_sql(
            postgres_url,
            "ALTER TABLE ctxl_audit ALTER COLUMN details TYPE jsonb "
            "USING details::jsonb",
        )
        ledger.open_context("carol", "t1", metadata={"a": 1})
        store_as_an_older_release(postgres_url, "alice")

        with pytest.raises(ViewCannotApply) as raised:
            views.catch_up()
        positions = [status.position for status in views.status()]
        carol = [row.details for row in views.audit_rows("carol")]
        views.rebuild(["audit"])

        # Metadata is sealed in the view (no NUL reaches jsonb); the clear's
        # reason, at position 5, is not.
        assert (raised.value.view, raised.value.position) == ("audit", 5)
        assert raised.value.user_id == "alice"
        assert "\\u0000" in raised.value.cause
        assert positions == [5, 4, 5]
        assert carol == [event.details for event in ledger.history("carol")]
        assert views.verify() == EQUAL


def test_continuity_records_a_second_context_created_on_an_active_thread(
    durable_url: str, ledger: ContextLedger, views: Projections
) -> None:
    first = ledger.open_context("alice", "t1")
    append_raw_creation(durable_url, "alice", "t1")

    views.catch_up()

    figures = views.continuity("alice")
    assert (figures.created, figures.threads_with_overlap) == (2, 1)
    assert views.verify()["continuity"] == []
    overlap = views.audit_rows("alice")[-1]
    assert overlap.kind == "created"
    assert overlap.context_id != first.context_id
