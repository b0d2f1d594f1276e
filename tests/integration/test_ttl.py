"""Sliding time to live: expiry on reuse, on read and by expire_due."""

from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time

from ledger import ContextLedger, ContextNotFound, LedgerConfigError
from tests.helpers import OpenLedger

START = "2026-03-01 12:00:00"


def test_expires_at_is_last_use_plus_ttl(ledger: ContextLedger) -> None:
    with freeze_time(START) as clock:
        opened = ledger.open_context("alice", "t", ttl_seconds=60)
        clock.tick(30)
        reused = ledger.open_context("alice", "t")

    assert opened.expires_at == opened.created_at + timedelta(seconds=60)
    assert reused.expires_at == reused.last_used_at + timedelta(seconds=60)
    assert reused.expires_at - opened.expires_at == timedelta(seconds=30)


def test_reuse_within_the_ttl_slides_the_expiry(ledger: ContextLedger) -> None:
    with freeze_time(START) as clock:
        opened = ledger.open_context("alice", "t", ttl_seconds=60)
        for _ in range(5):
            clock.tick(50)
            assert ledger.open_context("alice", "t").context_id == opened.context_id
        assert ledger.get_context("alice", "t") is not None


def test_an_expired_context_is_not_returned_and_nothing_is_appended(
    ledger: ContextLedger,
) -> None:
    with freeze_time(START) as clock:
        ledger.open_context("alice", "t", ttl_seconds=60)
        clock.tick(60)

        assert ledger.get_context("alice", "t") is None
        assert ledger.active_contexts("alice") == []
    assert len(ledger.history("alice")) == 1


def test_opening_an_expired_thread_records_expiry_then_a_new_context(
    ledger: ContextLedger,
) -> None:
    with freeze_time(START) as clock:
        old = ledger.open_context("alice", "t", ttl_seconds=60)
        clock.tick(61)
        new = ledger.open_context("alice", "t")

    kinds = [(e.kind, e.context_id) for e in ledger.history("alice")]
    assert kinds == [
        ("created", old.context_id),
        ("expired", old.context_id),
        ("created", new.context_id),
    ]
    assert ledger.history("alice")[1].details["reason"] == "ttl"


def test_default_ttl_applies_when_none_is_given(open_ledger: OpenLedger) -> None:
    ledger = open_ledger(default_ttl_seconds=10)
    with freeze_time(START):
        opened = ledger.open_context("alice", "t")
        own = ledger.open_context("alice", "u", ttl_seconds=99)

    assert opened.ttl_seconds == 10
    assert own.ttl_seconds == 99


def test_without_any_ttl_a_context_never_expires(ledger: ContextLedger) -> None:
    with freeze_time(START) as clock:
        opened = ledger.open_context("alice", "t")
        clock.tick(timedelta(days=3650))

        assert opened.expires_at is None
        assert ledger.expire_due() == 0
        assert ledger.get_context("alice", "t") == opened


def test_expire_due_expires_every_due_context_across_users(
    ledger: ContextLedger,
) -> None:
    with freeze_time(START) as clock:
        ledger.open_context("alice", "short", ttl_seconds=10)
        ledger.open_context("alice", "long", ttl_seconds=1000)
        ledger.open_context("bob", "short", ttl_seconds=10)
        ledger.open_context("carol", "forever")
        clock.tick(11)

        expired = ledger.expire_due()
        again = ledger.expire_due()

        assert (expired, again) == (2, 0)
        assert [c.thread_id for c in ledger.active_contexts("alice")] == ["long"]
        assert ledger.active_contexts("bob") == []
        assert len(ledger.active_contexts("carol")) == 1


def test_expire_due_does_not_expire_a_context_reused_in_time(
    ledger: ContextLedger,
) -> None:
    with freeze_time(START) as clock:
        ledger.open_context("alice", "t", ttl_seconds=10)
        assert ledger.expire_due() == 0
        clock.tick(8)
        ledger.open_context("alice", "t")
        clock.tick(8)

        assert ledger.expire_due() == 0
        clock.tick(3)
        assert ledger.expire_due() == 1


def test_expire_due_sees_contexts_written_by_another_ledger(durable_url: str) -> None:
    with (
        ContextLedger.open(durable_url) as writer,
        ContextLedger.open(durable_url) as expirer,
        freeze_time(START) as clock,
    ):
        expirer.expire_due()
        writer.open_context("alice", "t", ttl_seconds=5)
        clock.tick(6)

        assert expirer.expire_due() == 1
        assert writer.history("alice")[-1].kind == "expired"


def test_updating_an_expired_context_is_refused(ledger: ContextLedger) -> None:
    with freeze_time(START) as clock:
        opened = ledger.open_context("alice", "t", ttl_seconds=5)
        clock.tick(5)

        with pytest.raises(ContextNotFound):
            ledger.update_context("alice", opened.context_id, metadata={"x": 1})
    assert len(ledger.history("alice")) == 1


def test_clearing_a_due_context_records_it_as_expired(ledger: ContextLedger) -> None:
    with freeze_time(START) as clock:
        opened = ledger.open_context("alice", "t", ttl_seconds=5)
        clock.tick(5)

        ledger.clear_context("alice", opened.context_id)

    assert [e.kind for e in ledger.history("alice")] == ["created", "expired"]


def test_an_injected_clock_moves_time_like_freezegun(ledger_url: str) -> None:
    now = [datetime(2026, 3, 1, 12, tzinfo=UTC)]
    with ContextLedger.open(ledger_url, clock=lambda: now[0]) as ledger:
        opened = ledger.open_context("alice", "t", ttl_seconds=60)
        now[0] += timedelta(seconds=61)

        assert ledger.get_context("alice", "t") is None
        assert ledger.expire_due() == 1
    assert opened.created_at == datetime(2026, 3, 1, 12, tzinfo=UTC)


def test_a_clock_without_a_timezone_is_a_configuration_error() -> None:
    naive = datetime(2026, 3, 1, 12)  # noqa: DTZ001  (the error under test)
    with (
        ContextLedger.open("memory://", clock=lambda: naive) as ledger,
        pytest.raises(LedgerConfigError, match="not a timezone-aware datetime"),
    ):
        ledger.open_context("alice", "t")


def test_event_times_of_a_user_never_go_backwards(ledger_url: str) -> None:
    now = [datetime(2026, 3, 1, 12, tzinfo=UTC)]
    with ContextLedger.open(ledger_url, clock=lambda: now[0]) as ledger:
        ledger.open_context("alice", "t")
        now[0] -= timedelta(minutes=5)  # another host with a slow clock
        ledger.open_context("alice", "t")

        times = [event.occurred_at for event in ledger.history("alice")]

    assert times == [datetime(2026, 3, 1, 12, tzinfo=UTC)] * 2
