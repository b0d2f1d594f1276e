"""Contract of each view, on SQLite and PostgreSQL: it answers what the ledger says."""

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time

from ledger import ContextLedger, InvalidContextInput
from projections import Projections, UnknownView

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
