"""Sliding time to live: expiry on reuse, on read and by expire_due, decided by the
stream's time even on a host whose clock is behind, past one user's damaged event and
up to the end of the calendar."""

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgpack
import pytest
from freezegun import freeze_time

from ledger import ContextLedger, ContextNotFound, LedgerConfigError, LedgerCorrupted
from tests.helpers import OpenLedger, run
from tests.tampering import execute_sql, stream_key

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


T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def _kinds(ledger: ContextLedger, user: str) -> list[str]:
    return [event.kind for event in ledger.history(user)]


# A host whose clock is behind decides with the stream's time.


@pytest.fixture
def hosts(durable_url: str) -> Iterator[Callable[[Clock], ContextLedger]]:
    """Opens the test's ledger as another host would, with its own clock."""
    opened: list[ContextLedger] = []

    def open_host(clock: Clock) -> ContextLedger:
        opened.append(ContextLedger.open(durable_url, clock=clock))
        return opened[-1]

    yield open_host
    for ledger in opened:
        ledger.close()


def test_a_host_whose_clock_is_behind_does_not_revive_an_expired_context(
    hosts: Callable[[Clock], ContextLedger],
) -> None:
    ahead, behind = Clock(T0), Clock(T0)
    host_a, host_b = hosts(ahead), hosts(behind)
    context = host_a.open_context("alice", "t1", ttl_seconds=60)
    host_a.open_context("alice", "t2")
    ahead.at = T0 + timedelta(seconds=100)
    behind.at = ahead.at - timedelta(seconds=195)  # B's clock is 195 s behind A's
    host_a.open_context("alice", "t2")  # a reuse: the stream's time is now T0 + 100 s

    with pytest.raises(ContextNotFound):
        host_b.update_context("alice", context.context_id, metadata={"n": 1})
    assert host_b.get_context("alice", "t1") is None
    reopened = host_b.open_context("alice", "t1")

    assert reopened.context_id != context.context_id
    history = host_b.history("alice")
    assert [e.kind for e in history] == [
        "created",
        "created",
        "reused",
        "expired",
        "created",
    ]
    times = [event.occurred_at for event in history]
    assert times == sorted(times)
    assert all(time >= T0 + timedelta(seconds=100) for time in times[2:])
    # Once its time ran out, the context is never shown alive again.
    for event in history:
        alive = {
            c.context_id for c in host_b.contexts_as_of("alice", event.occurred_at)
        }
        if event.occurred_at >= T0 + timedelta(seconds=60):
            assert context.context_id not in alive


def test_a_host_whose_clock_is_behind_sees_the_stream_time_in_queries(
    hosts: Callable[[Clock], ContextLedger],
) -> None:
    ahead, behind = Clock(T0), Clock(T0 - timedelta(seconds=300))
    host_a, host_b = hosts(ahead), hosts(behind)
    host_a.open_context("alice", "t1", ttl_seconds=60)
    host_a.open_context("alice", "t2")
    ahead.at += timedelta(seconds=120)
    host_a.open_context("alice", "t2")  # a reuse: no expiry recorded

    assert host_b.get_context("alice", "t1") is None
    assert [c.thread_id for c in host_b.active_contexts("alice")] == ["t2"]


# One user's damaged event does not stop the others' expiries.


@pytest.mark.parametrize("damage", ["undecodable", "invalid", "unhashable key"])
def test_expire_due_records_the_others_and_names_the_damaged_user(
    durable_url: str, tmp_path: Path, damage: str
) -> None:
    clock = Clock(T0)
    with ContextLedger.open(durable_url, clock=clock) as ledger:
        for user in ("alice", "bob", "carol"):
            ledger.open_context(user, "t", ttl_seconds=60)
        ledger.open_context("bob", "u", ttl_seconds=60)
    state = "{c1}" if damage == "undecodable" else "{p}"
    params: tuple[Any, ...] = (stream_key(durable_url, "bob"),)
    if damage == "invalid":  # msgpack, but not an event
        params = (msgpack.packb({"user_id": "bob", "kind": "?"}), *params)
    if damage == "unhashable key":  # a map whose key is a list
        params = (b"\x81\x91\x01\x01", *params)
    execute_sql(
        durable_url,
        f"UPDATE {{events}} SET state = {state} "  # noqa: S608  (a literal)
        "WHERE originator_id = {p} AND originator_version = 2",
        params,
    )
    clock.at = T0 + timedelta(seconds=61)

    with ContextLedger.open(durable_url, clock=clock) as ledger:
        with pytest.raises(LedgerCorrupted) as caught:
            ledger.expire_due()
        alice, carol = _kinds(ledger, "alice"), _kinds(ledger, "carol")
        again = ledger.history("alice")

    assert caught.value.user_id == "bob"
    assert "recorded 2 expiries of other users" in "\n".join(
        getattr(caught.value, "__notes__", [])
    )
    assert alice == carol == ["created", "expired"]
    assert len(again) == 2
    cli = run("--db", durable_url, "expire", cwd=tmp_path)  # one line, exit 1
    assert cli.returncode == 1
    assert "bob" in cli.stderr
    assert "Traceback" not in cli.stderr


# The end of the calendar.


def test_a_time_to_live_past_the_year_9999_ends_at_the_last_time(
    open_ledger: OpenLedger,
) -> None:
    clock = Clock(datetime(9999, 12, 31, 23, 0, tzinfo=UTC))
    ledger = open_ledger(clock=clock)

    context = ledger.open_context("alice", "t", ttl_seconds=7200)
    reused = ledger.open_context("alice", "t", ttl_seconds=3 * 365 * 24 * 3600)
    clock.at = datetime.max.replace(tzinfo=UTC)
    expired = ledger.expire_due()

    assert context.expires_at == datetime.max.replace(tzinfo=UTC)
    assert reused.reuse_count == 1
    assert expired == 1
    assert _kinds(ledger, "alice") == ["created", "reused", "expired"]
    assert ledger.verify_chain().holds
