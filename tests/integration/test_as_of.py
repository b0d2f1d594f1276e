"""Auditor queries from the event store: contexts as of an instant, history by
period, one context's history."""

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from freezegun import freeze_time

from ledger import (
    ContextLedger,
    ContextNotFound,
    InvalidContextInput,
    LedgerEvent,
)
from ledger._store.application import SNAPSHOT_INTERVAL
from ledger._store.serialization import MsgpackTranscoder
from tests.helpers import OpenLedger
from tests.tampering import execute_sql, stream_key

T0 = datetime(2026, 4, 1, 12, 0, tzinfo=UTC)
Seen = tuple[str, str | None, int, dict[str, int]]
TINY = timedelta(microseconds=1)


def _seen(ledger: ContextLedger, user: str, at: datetime) -> list[tuple[Any, ...]]:
    return [
        (c.thread_id, c.run_id, c.reuse_count, c.metadata)
        for c in ledger.contexts_as_of(user, at)
    ]


def test_as_of_just_before_at_and_after_every_kind_of_event(
    ledger: ContextLedger,
) -> None:
    with freeze_time(T0) as clock:
        first = ledger.open_context("u", "t1", run_id="r1", ttl_seconds=60)
        clock.tick(10)
        ledger.open_context("u", "t1", metadata={"m": 1})
        clock.tick(10)
        ledger.update_context("u", first.context_id, run_id="r2")
        clock.tick(10)
        second = ledger.open_context("u", "t2")
        clock.tick(10)
        ledger.clear_context("u", second.context_id)
        clock.tick(100)
        assert ledger.expire_due() == 1
    kinds = [(e.kind, e.occurred_at - T0) for e in ledger.history("u")]
    s = timedelta(seconds=1)
    assert kinds == [
        ("created", 0 * s),
        ("reused", 10 * s),
        ("updated", 20 * s),
        ("created", 30 * s),
        ("cleared", 40 * s),
        ("expired", 140 * s),
    ]
    t1_r1: Seen = ("t1", "r1", 0, {})
    t1_reused = ("t1", "r1", 1, {"m": 1})
    t1_r2 = ("t1", "r2", 1, {"m": 1})
    t2: Seen = ("t2", None, 0, {})
    expected = {
        T0 - TINY: [],
        T0: [t1_r1],
        T0 + 10 * s - TINY: [t1_r1],
        T0 + 10 * s: [t1_reused],
        T0 + 20 * s - TINY: [t1_reused],
        T0 + 20 * s: [t1_r2],
        T0 + 30 * s - TINY: [t1_r2],
        T0 + 30 * s: [t1_r2, t2],
        T0 + 40 * s - TINY: [t1_r2, t2],
        T0 + 40 * s: [t1_r2],
        # The update at +20 s moved the expiry to +80 s, long before it was recorded.
        T0 + 80 * s - TINY: [t1_r2],
        T0 + 80 * s: [],
        T0 + 140 * s - TINY: [],
        T0 + 140 * s: [],
        T0 + 140 * s + TINY: [],
    }
    assert {at: _seen(ledger, "u", at) for at in expected} == expected


def test_as_of_gives_the_context_as_it_stood_then(ledger: ContextLedger) -> None:
    with freeze_time(T0) as clock:
        opened = ledger.open_context("u", "t", ttl_seconds=50)
        clock.tick(20)
        ledger.open_context("u", "t", metadata={"a": 1})

    (then,) = ledger.contexts_as_of("u", T0 + timedelta(seconds=5))

    assert then == opened
    assert then.expires_at == T0 + timedelta(seconds=50)


def test_times_in_other_zones_mean_the_same_instant(ledger: ContextLedger) -> None:
    with freeze_time(T0):
        ledger.open_context("u", "t")
    same_instant = T0.astimezone(timezone(timedelta(hours=2)))
    assert same_instant.hour == T0.hour + 2

    assert len(ledger.contexts_as_of("u", same_instant)) == 1
    assert ledger.contexts_as_of("u", same_instant - TINY) == []


def _oracle(events: list[LedgerEvent], at: datetime) -> list[tuple[Any, ...]]:
    """Contexts at ``at`` by a replay written here from the event fields alone."""
    live: dict[str, dict[str, Any]] = {}
    for event in events:
        if event.occurred_at > at:
            break
        d = event.details
        if event.kind == "created":
            live[event.context_id] = {
                "thread": event.thread_id,
                "run": event.run_id,
                "reuses": 0,
                "metadata": dict(d["metadata"]),
                "ttl": d["ttl_seconds"],
                "used": event.occurred_at,
            }
        elif event.kind in ("reused", "updated"):
            c = live[event.context_id]
            c["run"], c["used"] = event.run_id, event.occurred_at
            c["metadata"] = {
                k: v
                for k, v in {**c["metadata"], **d["metadata"]}.items()
                if v is not None
            }
            if event.kind == "reused":
                c["reuses"], c["ttl"] = d["reuse_count"], d["ttl_seconds"]
        else:
            del live[event.context_id]
    return sorted(
        (c["thread"], c["run"], c["reuses"], c["metadata"])
        for c in live.values()
        if c["ttl"] is None or c["used"] + timedelta(seconds=c["ttl"]) > at
    )


def _long_history(ledger: ContextLedger, user: str, steps: int) -> None:
    with freeze_time(T0) as clock:
        for step in range(steps):
            thread = f"t{step % 4}"
            context = ledger.open_context(
                user,
                thread,
                run_id=f"r{step % 3}",
                ttl_seconds=25,
                metadata={"s": step},
            )
            clock.tick(3)
            if step % 5 == 0:
                ledger.update_context(user, context.context_id, metadata={"s": None})
            if step % 7 == 0:
                ledger.clear_context(user, context.context_id)
            if step % 11 == 0:
                clock.tick(30)
                ledger.expire_due()


def _instants(events: list[LedgerEvent]) -> list[datetime]:
    return sorted({e.occurred_at + d for e in events for d in (-TINY, 0 * TINY, TINY)})


def test_as_of_across_many_snapshots_matches_a_replay_from_the_start(
    ledger: ContextLedger,
) -> None:
    _long_history(ledger, "u", 120)
    events = ledger.history("u")
    assert len(events) > 3 * SNAPSHOT_INTERVAL

    for at in _instants(events):
        assert sorted(_seen(ledger, "u", at)) == _oracle(events, at), at


def test_unusable_snapshots_are_passed_over(durable_url: str) -> None:
    with ContextLedger.open(durable_url) as ledger:
        _long_history(ledger, "u", 120)
        events = ledger.history("u")
    key = stream_key(durable_url, "u")
    versions = [
        row[0]
        for row in execute_sql(
            durable_url,
            "SELECT originator_version FROM {snapshots} WHERE originator_id = {p} "
            "ORDER BY originator_version",
            (key,),
        )
    ]
    assert len(versions) >= 3
    # The newest cannot be decoded; the one before names a hash no event has
    # (and lost its contexts, which would show if it were used).
    execute_sql(
        durable_url,
        "UPDATE {snapshots} SET state = {c1} WHERE originator_id = {p} "
        "AND originator_version = {p}",
        (key, versions[-1]),
    )
    (state,) = execute_sql(
        durable_url,
        "SELECT state FROM {snapshots} WHERE originator_id = {p} "
        "AND originator_version = {p}",
        (key, versions[-2]),
    )[0]
    snapshot = MsgpackTranscoder().decode(bytes(state))
    snapshot["last_hash"] = "0" * 64
    snapshot["contexts"] = []
    execute_sql(
        durable_url,
        "UPDATE {snapshots} SET state = {p} WHERE originator_id = {p} "
        "AND originator_version = {p}",
        (MsgpackTranscoder().encode(snapshot), key, versions[-2]),
    )

    with ContextLedger.open(durable_url) as ledger:
        for at in _instants(events)[-60:]:
            assert sorted(_seen(ledger, "u", at)) == _oracle(events, at), at


def test_history_by_period(ledger: ContextLedger) -> None:
    _long_history(ledger, "u", 70)
    events = ledger.history("u")
    bounds = [None, *_instants(events)[::23]]

    for since in bounds:
        for until in bounds:
            if since is not None and until is not None and until < since:
                continue
            want = [
                e
                for e in events
                if (since is None or e.occurred_at >= since)
                and (until is None or e.occurred_at < until)
            ]
            assert ledger.history("u", since=since, until=until) == want


def test_context_history_covers_one_context_and_only_its_owner(
    open_ledger: OpenLedger,
) -> None:
    ledger = open_ledger()
    with freeze_time(T0) as clock:
        mine = ledger.open_context("alice", "t", ttl_seconds=5)
        ledger.open_context("alice", "other")
        ledger.open_context("alice", "t", metadata={"k": 1})
        clock.tick(6)
        ledger.expire_due()
        theirs = ledger.open_context("bob", "t")

    kinds = [e.kind for e in ledger.context_history("alice", mine.context_id)]

    assert kinds == ["created", "reused", "expired"]
    with pytest.raises(ContextNotFound, match="has no context") as raised:
        ledger.context_history("alice", theirs.context_id)
    assert raised.value.in_history
    with pytest.raises(ContextNotFound):
        ledger.context_history("bob", mine.context_id)
    assert ledger.contexts_as_of("carol", T0) == []
    assert ledger.history("carol") == []


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda led: led.contexts_as_of("u", datetime(2026, 1, 1)), "as_of"),  # noqa: DTZ001
        (lambda led: led.contexts_as_of("u", "2026-01-01T00:00:00Z"), "as_of"),
        (lambda led: led.history("u", since=datetime(2026, 1, 1)), "since"),  # noqa: DTZ001
        (lambda led: led.history("u", since=T0, until=T0 - TINY), "until"),
        (lambda led: led.contexts_as_of("", T0), "user_id"),
        (lambda led: led.context_history("u", ""), "context_id"),
        (lambda led: led.verify_chain(""), "user_id"),
    ],
)
def test_bad_input_is_refused_with_the_field_named(
    ledger: ContextLedger, call: Any, field: str
) -> None:
    with pytest.raises(InvalidContextInput) as raised:
        call(ledger)

    assert raised.value.field == field
