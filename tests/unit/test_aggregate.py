"""The per-user aggregate on its own: commands decide, events change the state."""

from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest

from ledger import ContextLimitExceeded, ContextNotFound
from ledger._domain.contexts import (
    UserContexts,
    UserSnapshot,
    evolve_context,
    project_user,
)
from ledger._domain.events import (
    ContextCleared,
    ContextCreated,
    ContextEvent,
    ContextExpired,
    ContextReused,
    ContextUpdated,
)
from ledger._domain.hashing import GENESIS_HASH, chain_hash
from ledger._domain.models import Context

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _open(
    aggregate: UserContexts,
    thread_id: str,
    *,
    now: datetime = T0,
    run_id: str | None = None,
    metadata: dict[str, Any] | None = None,
    ttl_seconds: float | None = None,
    default_ttl_seconds: float | None = None,
    limit: int = 10,
) -> Context:
    return aggregate.open(
        thread_id,
        run_id=run_id,
        metadata=metadata or {},
        ttl_seconds=ttl_seconds,
        default_ttl_seconds=default_ttl_seconds,
        now=now,
        limit=limit,
    )


def _kinds(events: list[ContextEvent]) -> list[tuple[str, str]]:
    return [(event.KIND, event.context_id) for event in events]


def _busy(user_id: str = "alice") -> UserContexts:
    """An aggregate that has seen every kind of event, with two contexts left."""
    aggregate = UserContexts.start(user_id, T0)
    first = _open(aggregate, "a", run_id="r1", metadata={"k": 1}, ttl_seconds=60)
    _open(aggregate, "a", now=at(10), run_id="r2", metadata={"j": 2})
    aggregate.update(first.context_id, run_id=None, metadata={"k": None}, now=at(20))
    short = _open(aggregate, "b", now=at(30), ttl_seconds=5)
    cleared = _open(aggregate, "c", now=at(31))
    aggregate.clear(cleared.context_id, reason="done", now=at(32))
    aggregate.expire_due(at(40))
    _open(aggregate, "d", now=at(41), metadata={"x": [1, 2]})
    assert short.context_id not in aggregate.contexts
    return aggregate


# Starting.


def test_a_started_aggregate_is_empty_at_version_zero_from_the_genesis_hash() -> None:
    aggregate = UserContexts.start("alice", T0)

    assert (aggregate.version, aggregate.last_hash) == (0, GENESIS_HASH)
    assert aggregate.contexts == {}
    assert aggregate.pending == []


def test_a_users_aggregate_id_is_the_same_each_time_it_is_started() -> None:
    one = UserContexts.start("alice", T0)
    two = UserContexts.start("alice", at(99))

    assert one.id == two.id
    assert one.id != UserContexts.start("bob", T0).id


# Opening.


def test_open_creates_a_context_for_a_thread_that_has_none() -> None:
    aggregate = UserContexts.start("alice", T0)

    context = _open(aggregate, "t", run_id="r1", metadata={"model": "small"})

    assert _kinds(aggregate.pending) == [("created", context.context_id)]
    assert aggregate.for_thread("t") == context
    assert (context.user_id, context.thread_id, context.run_id) == ("alice", "t", "r1")
    assert context.metadata == {"model": "small"}
    assert (context.created_at, context.last_used_at, context.reuse_count) == (
        T0,
        T0,
        0,
    )


def test_open_reuses_the_threads_live_context() -> None:
    aggregate = UserContexts.start("alice", T0)
    opened = _open(aggregate, "t", ttl_seconds=60)

    again = _open(aggregate, "t", now=at(30))

    assert again.context_id == opened.context_id
    assert again.reuse_count == opened.reuse_count + 1
    assert again.last_used_at == at(30)
    reused = aggregate.pending[-1]
    assert isinstance(reused, ContextReused)
    assert (reused.context_id, reused.reuse_count) == (opened.context_id, 1)


def test_open_creates_a_separate_context_for_another_thread() -> None:
    aggregate = UserContexts.start("alice", T0)
    first = _open(aggregate, "t")

    second = _open(aggregate, "u", now=at(1))

    assert second.context_id != first.context_id
    assert _kinds(aggregate.pending) == [
        ("created", first.context_id),
        ("created", second.context_id),
    ]


def test_a_reuse_without_a_run_id_keeps_the_contexts_run_id() -> None:
    aggregate = UserContexts.start("alice", T0)
    _open(aggregate, "t", run_id="r1")

    again = _open(aggregate, "t", now=at(1))

    assert again.run_id == "r1"


def test_a_reuse_with_a_run_id_makes_it_the_contexts_run_id() -> None:
    aggregate = UserContexts.start("alice", T0)
    _open(aggregate, "t", run_id="r1")

    again = _open(aggregate, "t", now=at(1), run_id="r2")

    assert again.run_id == "r2"


def test_a_reuse_merges_its_metadata_into_the_contexts() -> None:
    aggregate = UserContexts.start("alice", T0)
    _open(aggregate, "t", metadata={"keep": 1, "drop": 2, "change": 3})

    again = _open(aggregate, "t", now=at(1), metadata={"drop": None, "change": 4})

    assert again.metadata == {"keep": 1, "change": 4}


def test_a_reuse_records_the_patch_not_the_merged_metadata() -> None:
    aggregate = UserContexts.start("alice", T0)
    _open(aggregate, "t", metadata={"keep": 1})

    _open(aggregate, "t", now=at(1), metadata={"new": None})

    reused = aggregate.pending[-1]
    assert isinstance(reused, ContextReused)
    assert reused.metadata == {"new": None}


def test_metadata_keys_given_as_none_on_creation_are_not_stored() -> None:
    aggregate = UserContexts.start("alice", T0)

    context = _open(aggregate, "t", metadata={"a": 1, "b": None})

    assert context.metadata == {"a": 1}


def test_open_on_a_thread_whose_context_ran_out_expires_it_then_creates_one() -> None:
    aggregate = UserContexts.start("alice", T0)
    old = _open(aggregate, "t", ttl_seconds=60)

    new = _open(aggregate, "t", now=at(61))

    assert new.context_id != old.context_id
    assert _kinds(aggregate.pending) == [
        ("created", old.context_id),
        ("expired", old.context_id),
        ("created", new.context_id),
    ]
    assert aggregate.for_thread("t") == new


def test_creating_a_context_also_expires_the_users_other_due_contexts() -> None:
    aggregate = UserContexts.start("alice", T0)
    due = _open(aggregate, "a", ttl_seconds=5)

    created = _open(aggregate, "b", now=at(10))

    assert _kinds(aggregate.pending)[1:] == [
        ("expired", due.context_id),
        ("created", created.context_id),
    ]


def test_the_ttl_given_on_open_wins_over_the_default() -> None:
    aggregate = UserContexts.start("alice", T0)

    context = _open(aggregate, "t", ttl_seconds=30, default_ttl_seconds=600)

    assert context.ttl_seconds == 30
    assert context.expires_at == at(30)


def test_the_default_ttl_applies_when_open_is_given_none() -> None:
    aggregate = UserContexts.start("alice", T0)

    context = _open(aggregate, "t", default_ttl_seconds=600)

    assert context.ttl_seconds == 600
    assert context.expires_at == at(600)


def test_a_context_without_any_ttl_never_expires() -> None:
    aggregate = UserContexts.start("alice", T0)
    context = _open(aggregate, "t")

    expired = aggregate.expire_due(T0 + timedelta(days=10_000))

    assert context.expires_at is None
    assert expired == 0
    assert aggregate.for_thread("t") == context


def test_a_reuse_slides_the_expiry_from_the_last_use() -> None:
    aggregate = UserContexts.start("alice", T0)
    _open(aggregate, "t", ttl_seconds=60)

    again = _open(aggregate, "t", now=at(50))

    assert again.expires_at == at(110)


def test_a_reuse_with_a_ttl_replaces_the_contexts_ttl() -> None:
    aggregate = UserContexts.start("alice", T0)
    _open(aggregate, "t", ttl_seconds=60)

    again = _open(aggregate, "t", now=at(10), ttl_seconds=5, default_ttl_seconds=900)

    assert (again.ttl_seconds, again.expires_at) == (5, at(15))


def test_a_reuse_without_a_ttl_keeps_the_contexts_ttl_not_the_default() -> None:
    aggregate = UserContexts.start("alice", T0)
    _open(aggregate, "t", ttl_seconds=60)

    again = _open(aggregate, "t", now=at(10), default_ttl_seconds=900)

    assert (again.ttl_seconds, again.expires_at) == (60, at(70))


# The limit.


def test_opening_a_new_context_at_the_limit_raises_and_triggers_nothing() -> None:
    aggregate = UserContexts.start("alice", T0)
    _open(aggregate, "a", limit=2)
    _open(aggregate, "b", limit=2)
    aggregate.collect_events()
    before = (aggregate.version, aggregate.last_hash, dict(aggregate.contexts))

    with pytest.raises(
        ContextLimitExceeded, match=r"user 'alice' already has 2 active contexts"
    ):
        _open(aggregate, "c", now=at(1), limit=2)

    assert aggregate.pending == []
    assert (aggregate.version, aggregate.last_hash, aggregate.contexts) == before


def test_the_limit_refuses_before_expiring_anything() -> None:
    aggregate = UserContexts.start("alice", T0)
    _open(aggregate, "a", ttl_seconds=5)
    _open(aggregate, "b")
    _open(aggregate, "c")
    aggregate.collect_events()

    with pytest.raises(ContextLimitExceeded, match=r"already has 2 active contexts"):
        _open(aggregate, "d", now=at(10), limit=2)

    assert aggregate.pending == []
    assert len(aggregate.contexts) == 3


def test_reusing_a_context_at_the_limit_still_works() -> None:
    aggregate = UserContexts.start("alice", T0)
    first = _open(aggregate, "a", limit=1)

    again = _open(aggregate, "a", now=at(1), limit=1)

    assert again.context_id == first.context_id


def test_a_context_that_ran_out_does_not_count_towards_the_limit() -> None:
    aggregate = UserContexts.start("alice", T0)
    due = _open(aggregate, "a", ttl_seconds=5, limit=1)

    created = _open(aggregate, "b", now=at(5), limit=1)

    assert list(aggregate.contexts) == [created.context_id]
    assert ("expired", due.context_id) in _kinds(aggregate.pending)


# Updating.


def test_update_merges_metadata_and_removes_keys_given_as_none() -> None:
    aggregate = UserContexts.start("alice", T0)
    context = _open(aggregate, "t", metadata={"keep": 1, "drop": 2, "change": 3})

    updated = aggregate.update(
        context.context_id,
        run_id=None,
        metadata={"drop": None, "change": 4, "add": 5},
        now=at(1),
    )

    assert updated.metadata == {"keep": 1, "change": 4, "add": 5}


def test_update_with_a_run_id_replaces_the_contexts_run_id() -> None:
    aggregate = UserContexts.start("alice", T0)
    context = _open(aggregate, "t", run_id="r1")

    updated = aggregate.update(context.context_id, run_id="r2", metadata={}, now=at(1))

    assert updated.run_id == "r2"
    assert _kinds(aggregate.pending)[-1] == ("updated", context.context_id)


def test_update_counts_as_a_use_and_slides_the_expiry_without_a_reuse() -> None:
    aggregate = UserContexts.start("alice", T0)
    context = _open(aggregate, "t", ttl_seconds=60)

    updated = aggregate.update(context.context_id, run_id=None, metadata={}, now=at(50))

    assert (updated.last_used_at, updated.expires_at) == (at(50), at(110))
    assert (updated.ttl_seconds, updated.reuse_count) == (60, 0)


def test_update_of_an_unknown_context_id_raises_context_not_found() -> None:
    aggregate = UserContexts.start("alice", T0)
    _open(aggregate, "t")

    with pytest.raises(
        ContextNotFound, match=r"no active context 'nope' for user 'alice'"
    ):
        aggregate.update("nope", run_id=None, metadata={}, now=at(1))


def test_update_of_another_users_context_raises_context_not_found() -> None:
    alice = UserContexts.start("alice", T0)
    bobs = _open(UserContexts.start("bob", T0), "t")
    _open(alice, "t")

    with pytest.raises(
        ContextNotFound,
        match=rf"no active context '{bobs.context_id}' for user 'alice'",
    ):
        alice.update(bobs.context_id, run_id=None, metadata={}, now=at(1))


def test_update_of_a_context_that_ran_out_raises_and_triggers_nothing() -> None:
    aggregate = UserContexts.start("alice", T0)
    context = _open(aggregate, "t", ttl_seconds=60)
    aggregate.collect_events()

    with pytest.raises(ContextNotFound, match=r"cleared or has expired"):
        aggregate.update(context.context_id, run_id=None, metadata={}, now=at(60))

    assert aggregate.pending == []


# Clearing and expiring.


def test_clear_ends_the_context_with_the_reason() -> None:
    aggregate = UserContexts.start("alice", T0)
    context = _open(aggregate, "t")

    aggregate.clear(context.context_id, reason="closed", now=at(1))

    cleared = aggregate.pending[-1]
    assert isinstance(cleared, ContextCleared)
    assert (cleared.context_id, cleared.reason) == (context.context_id, "closed")
    assert aggregate.contexts == {}
    assert aggregate.for_thread("t") is None


def test_clearing_a_context_that_ran_out_records_its_expiry_instead() -> None:
    aggregate = UserContexts.start("alice", T0)
    context = _open(aggregate, "t", ttl_seconds=60)

    aggregate.clear(context.context_id, reason="closed", now=at(61))

    expired = aggregate.pending[-1]
    assert isinstance(expired, ContextExpired)
    assert (expired.reason, expired.expires_at) == ("ttl", at(60))


def test_clear_of_an_unknown_context_id_raises_context_not_found() -> None:
    aggregate = UserContexts.start("alice", T0)

    with pytest.raises(ContextNotFound, match=r"no active context 'nope'"):
        aggregate.clear("nope", reason="closed", now=T0)


def test_clear_all_clears_the_live_contexts_and_counts_only_them() -> None:
    aggregate = UserContexts.start("alice", T0)
    due = _open(aggregate, "a", ttl_seconds=5)
    live = _open(aggregate, "b")
    aggregate.collect_events()

    count = aggregate.clear_all(reason="logout", now=at(10))

    assert count == 1
    assert _kinds(aggregate.pending) == [
        ("expired", due.context_id),
        ("cleared", live.context_id),
    ]
    assert aggregate.contexts == {}


def test_expire_due_expires_only_contexts_at_or_past_their_expiry() -> None:
    aggregate = UserContexts.start("alice", T0)
    exactly = _open(aggregate, "a", ttl_seconds=10)
    _open(aggregate, "b", ttl_seconds=11)
    _open(aggregate, "c")
    aggregate.collect_events()

    count = aggregate.expire_due(at(10))

    assert count == 1
    assert _kinds(aggregate.pending) == [("expired", exactly.context_id)]
    assert sorted(c.thread_id for c in aggregate.contexts.values()) == ["b", "c"]


def test_live_leaves_out_contexts_that_ran_out_but_are_not_yet_expired() -> None:
    aggregate = UserContexts.start("alice", T0)
    _open(aggregate, "a", ttl_seconds=10)
    kept = _open(aggregate, "b")

    live = aggregate.live(at(10))

    assert live == [kept]
    assert len(aggregate.contexts) == 2


def test_owned_finds_only_the_users_active_contexts() -> None:
    aggregate = UserContexts.start("alice", T0)
    context = _open(aggregate, "t")
    aggregate.clear(context.context_id, reason="done", now=at(1))

    with pytest.raises(ContextNotFound, match=rf"'{context.context_id}'"):
        aggregate.owned(context.context_id)


# Event times and the hash chain.


def test_events_are_never_stamped_before_the_previous_event() -> None:
    aggregate = UserContexts.start("alice", T0)
    context = _open(aggregate, "t", now=at(100))

    aggregate.update(context.context_id, run_id=None, metadata={}, now=at(40))
    _open(aggregate, "t", now=at(20))

    stamps = [event.timestamp for event in aggregate.pending]
    assert stamps == [at(100), at(100), at(100)]
    assert aggregate.modified_on == at(100)


def test_events_are_stamped_with_now_when_the_clock_moves_forward() -> None:
    aggregate = UserContexts.start("alice", T0)
    context = _open(aggregate, "t", now=at(1))

    aggregate.clear(context.context_id, reason="done", now=at(2))

    assert [event.timestamp for event in aggregate.pending] == [at(1), at(2)]


def test_a_snapshot_keeps_event_times_from_going_backwards() -> None:
    aggregate = UserContexts.start("alice", T0)
    _open(aggregate, "t", now=at(100))
    restored = UserContexts.from_snapshot(UserSnapshot.take(aggregate))

    _open(restored, "u", now=at(5))

    assert restored.pending[-1].timestamp == at(100)


def test_events_carry_consecutive_versions_from_one() -> None:
    aggregate = _busy()

    versions = [event.originator_version for event in aggregate.pending]

    assert versions == list(range(1, aggregate.version + 1))


def test_the_first_event_links_to_the_genesis_hash() -> None:
    aggregate = UserContexts.start("alice", T0)

    _open(aggregate, "t")

    assert aggregate.pending[0].prev_hash == GENESIS_HASH


def test_each_event_links_to_the_hash_of_the_event_before_it() -> None:
    events = _busy().pending

    links = [
        (later.prev_hash, chain_hash(earlier.ledger_record()))
        for earlier, later in pairwise(events)
    ]

    assert len(events) == 8
    assert all(recorded == computed for recorded, computed in links)


def test_last_hash_is_the_hash_of_the_newest_event() -> None:
    aggregate = _busy()

    newest = aggregate.pending[-1]

    assert aggregate.last_hash == chain_hash(newest.ledger_record())


def test_collect_events_hands_over_the_pending_events_once() -> None:
    aggregate = UserContexts.start("alice", T0)
    _open(aggregate, "t")
    _open(aggregate, "u")

    collected = aggregate.collect_events()

    assert _kinds(collected) == [("created", c) for c in aggregate.contexts]
    assert aggregate.pending == []
    assert aggregate.collect_events() == []


def test_changing_the_pending_list_changes_nothing_in_the_aggregate() -> None:
    aggregate = UserContexts.start("alice", T0)
    _open(aggregate, "t")

    aggregate.pending.clear()

    assert len(aggregate.pending) == 1


# Replay: apply, project_user, snapshots.


def test_applying_the_events_to_a_new_aggregate_rebuilds_the_same_state() -> None:
    original = _busy()
    replayed = UserContexts.start("alice", T0)

    for event in original.pending:
        replayed.apply(event)

    assert replayed.contexts == original.contexts
    assert (replayed.version, replayed.last_hash) == (
        original.version,
        original.last_hash,
    )
    assert replayed.pending == []


def test_apply_refuses_an_event_that_skips_a_version() -> None:
    events = _busy().pending
    aggregate = UserContexts.start("alice", T0)
    aggregate.apply(events[0])

    with pytest.raises(
        ValueError, match=r"event version 3 of user 'alice' does not follow version 1"
    ):
        aggregate.apply(events[2])

    assert aggregate.version == 1


def test_apply_refuses_an_event_applied_twice() -> None:
    events = _busy().pending
    aggregate = UserContexts.start("alice", T0)
    aggregate.apply(events[0])

    with pytest.raises(
        ValueError, match=r"event version 1 .* does not follow version 1"
    ):
        aggregate.apply(events[0])


def test_apply_refuses_an_event_that_moves_a_context_to_another_thread() -> None:
    source = UserContexts.start("alice", T0)
    context = _open(source, "t")
    source.update(context.context_id, run_id=None, metadata={}, now=at(1))
    created, updated = source.collect_events()
    target = UserContexts.start("alice", T0)
    target.apply(created)

    with pytest.raises(ValueError, match=r"names thread 'other', but the context"):
        target.apply(updated.model_copy(update={"thread_id": "other"}))


def test_project_user_replays_events_into_an_aggregate() -> None:
    original = _busy()

    projected = project_user(None, original.pending)

    assert projected is not None
    assert projected.contexts == original.contexts
    assert (projected.id, projected.user_id, projected.version) == (
        original.id,
        "alice",
        original.version,
    )
    assert projected.last_hash == original.last_hash


def test_project_user_of_no_events_is_none() -> None:
    assert project_user(None, []) is None


def test_project_user_starts_from_a_snapshot_and_applies_the_later_events() -> None:
    aggregate = UserContexts.start("alice", T0)
    _open(aggregate, "a", ttl_seconds=60)
    snapshot = UserSnapshot.take(aggregate)
    _open(aggregate, "a", now=at(10))
    _open(aggregate, "b", now=at(20))
    later = aggregate.pending[1:]

    projected = project_user(None, [snapshot, *later])

    assert projected is not None
    assert projected.contexts == aggregate.contexts
    assert projected.last_hash == aggregate.last_hash


def test_a_snapshot_round_trip_gives_the_same_aggregate() -> None:
    aggregate = _busy()

    restored = UserContexts.from_snapshot(UserSnapshot.take(aggregate))

    assert restored.contexts == aggregate.contexts
    assert (restored.version, restored.last_hash) == (
        aggregate.version,
        aggregate.last_hash,
    )
    assert (restored.id, restored.created_on, restored.modified_on) == (
        aggregate.id,
        aggregate.created_on,
        aggregate.modified_on,
    )


def test_a_restored_aggregate_finds_contexts_by_thread() -> None:
    aggregate = _busy()

    restored = UserContexts.from_snapshot(UserSnapshot.take(aggregate))

    assert restored.for_thread("a") == aggregate.for_thread("a")
    assert restored.for_thread("a") is not None
    assert restored.for_thread("c") is None


def test_a_snapshot_survives_its_json_encoding() -> None:
    aggregate = _busy()
    snapshot = UserSnapshot.take(aggregate)

    decoded = UserSnapshot.model_validate_json(snapshot.model_dump_json())

    assert decoded == snapshot


# Copies.


def test_a_copy_does_not_change_when_the_original_does() -> None:
    original = UserContexts.start("alice", T0)
    context = _open(original, "t")
    copy = original.copy()

    original.clear(context.context_id, reason="done", now=at(1))
    _open(original, "u", now=at(2))

    assert copy.contexts == {context.context_id: context}
    assert copy.for_thread("t") == context
    assert copy.for_thread("u") is None
    assert (copy.version, len(copy.pending)) == (1, 1)


def test_the_original_does_not_change_when_its_copy_does() -> None:
    original = UserContexts.start("alice", T0)
    context = _open(original, "t")
    before = (original.version, original.last_hash, original.modified_on)
    copy = original.copy()

    _open(copy, "t", now=at(1), metadata={"x": 1})
    _open(copy, "u", now=at(2))
    copy.collect_events()

    assert original.contexts == {context.context_id: context}
    assert (original.version, original.last_hash, original.modified_on) == before
    assert _kinds(original.pending) == [("created", context.context_id)]


# evolve_context: how each event changes a context.


def _event(cls: type[ContextEvent], **fields: Any) -> ContextEvent:
    common: dict[str, Any] = {
        "originator_id": UserContexts.start("alice", T0).id,
        "originator_version": 2,
        "timestamp": at(10),
        "user_id": "alice",
        "context_id": "c1",
        "thread_id": "t",
        "run_id": None,
        "prev_hash": GENESIS_HASH,
    }
    return cls(**{**common, **fields})


@pytest.mark.parametrize(
    ("event", "name"),
    [
        (_event(ContextUpdated, metadata={}), "ContextUpdated"),
        (
            _event(ContextReused, metadata={}, ttl_seconds=None, reuse_count=1),
            "ContextReused",
        ),
        (_event(ContextCleared, reason="done"), "ContextCleared"),
        (_event(ContextExpired, reason="ttl", expires_at=T0), "ContextExpired"),
    ],
)
def test_evolve_context_refuses_a_change_to_a_context_that_is_not_active(
    event: ContextEvent, name: str
) -> None:
    with pytest.raises(
        ValueError, match=rf"^{name} of context 'c1', which is not active$"
    ):
        evolve_context(None, event)


def test_evolve_context_builds_a_context_from_its_creation() -> None:
    created = _event(ContextCreated, metadata={"a": 1}, ttl_seconds=5.0)

    context = evolve_context(None, created)

    assert context == Context(
        context_id="c1",
        user_id="alice",
        thread_id="t",
        run_id=None,
        metadata={"a": 1},
        created_at=at(10),
        last_used_at=at(10),
        expires_at=at(15),
        ttl_seconds=5.0,
    )


def test_evolve_context_ends_a_context_on_its_clear() -> None:
    created = _event(ContextCreated, metadata={}, ttl_seconds=None)
    context = evolve_context(None, created)

    assert evolve_context(context, _event(ContextCleared, reason="done")) is None


def test_evolve_context_merges_an_updates_patch_and_removes_none_keys() -> None:
    created = _event(ContextCreated, metadata={"a": 1, "b": 2}, ttl_seconds=None)
    context = evolve_context(None, created)
    update = _event(ContextUpdated, metadata={"a": None, "c": 3}, run_id="r9")

    updated = evolve_context(context, update)

    assert updated is not None
    assert (updated.metadata, updated.run_id) == ({"b": 2, "c": 3}, "r9")
