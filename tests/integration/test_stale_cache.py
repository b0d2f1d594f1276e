"""Two ledgers on one database: each sees what the other wrote.

Each ledger caches aggregates; these tests change a user through one ledger
after the other has cached it, and check the other decides on the stored state.
"""

from collections.abc import Iterator

import pytest

from ledger import ContextLedger


@pytest.fixture
def pair(durable_url: str) -> Iterator[tuple[ContextLedger, ContextLedger]]:
    with (
        ContextLedger.open(durable_url, max_contexts_per_user=2) as first,
        ContextLedger.open(durable_url, max_contexts_per_user=2) as second,
    ):
        yield first, second


def test_a_context_cleared_elsewhere_is_not_reused(
    pair: tuple[ContextLedger, ContextLedger],
) -> None:
    first, second = pair
    old = first.open_context("alice", "t")
    second.clear_context("alice", old.context_id)

    new = first.open_context("alice", "t")

    assert new.context_id != old.context_id
    assert [e.kind for e in first.history("alice")] == ["created", "cleared", "created"]


def test_room_made_elsewhere_is_seen_by_the_limit(
    pair: tuple[ContextLedger, ContextLedger],
) -> None:
    first, second = pair
    first.open_context("alice", "a")
    full = first.open_context("alice", "b")
    second.clear_context("alice", full.context_id)

    assert first.open_context("alice", "c").thread_id == "c"


def test_a_context_opened_elsewhere_can_be_updated(
    pair: tuple[ContextLedger, ContextLedger],
) -> None:
    first, second = pair
    first.open_context("alice", "a")
    other = second.open_context("alice", "b")

    updated = first.update_context("alice", other.context_id, metadata={"k": 1})

    assert updated.metadata == {"k": 1}


def test_clear_user_counts_contexts_opened_elsewhere(
    pair: tuple[ContextLedger, ContextLedger],
) -> None:
    first, second = pair
    first.open_context("alice", "a")
    second.open_context("alice", "b")

    assert first.clear_user("alice") == 2
    assert second.active_contexts("alice") == []


def test_reads_see_writes_made_elsewhere(
    pair: tuple[ContextLedger, ContextLedger],
) -> None:
    first, second = pair
    opened = first.open_context("alice", "a")
    second.open_context("alice", "a", metadata={"from": "second"})

    seen = first.get_context("alice", "a")

    assert seen is not None
    assert (seen.metadata, seen.reuse_count) == ({"from": "second"}, 1)
    assert opened.reuse_count == 0
