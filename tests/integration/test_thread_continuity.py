"""One thread keeps one context across messages; threads never share one."""

from datetime import timedelta

from freezegun import freeze_time

from ledger import ContextLedger


def test_a_thread_reused_across_messages_keeps_one_context(
    ledger: ContextLedger,
) -> None:
    first = ledger.open_context("alice", "thread-1")

    later = [ledger.open_context("alice", "thread-1") for _ in range(4)]

    assert {context.context_id for context in later} == {first.context_id}
    assert [context.reuse_count for context in later] == [1, 2, 3, 4]


def test_history_of_a_reused_thread_is_one_created_then_reused_events(
    ledger: ContextLedger,
) -> None:
    for _ in range(3):
        ledger.open_context("alice", "thread-1")

    history = ledger.history("alice")

    assert [event.kind for event in history] == ["created", "reused", "reused"]
    assert len({event.context_id for event in history}) == 1
    assert [event.version for event in history] == [1, 2, 3]


def test_reuse_moves_last_used_at_and_keeps_created_at(ledger: ContextLedger) -> None:
    with freeze_time("2026-04-01 09:00:00") as clock:
        first = ledger.open_context("alice", "thread-1")
        clock.tick(90)

        again = ledger.open_context("alice", "thread-1")

    assert again.created_at == first.created_at
    assert again.last_used_at - first.last_used_at == timedelta(seconds=90)


def test_reuse_merges_metadata_and_takes_a_new_run_id(ledger: ContextLedger) -> None:
    ledger.open_context("alice", "t", run_id="run-1", metadata={"model": "a", "n": 1})

    again = ledger.open_context("alice", "t", run_id="run-2", metadata={"n": 2})

    assert again.run_id == "run-2"
    assert again.metadata == {"model": "a", "n": 2}


def test_reuse_without_a_run_id_keeps_the_current_one(ledger: ContextLedger) -> None:
    ledger.open_context("alice", "t", run_id="run-1")

    again = ledger.open_context("alice", "t")

    assert again.run_id == "run-1"


def test_different_threads_get_different_contexts(ledger: ContextLedger) -> None:
    one = ledger.open_context("alice", "thread-1")
    two = ledger.open_context("alice", "thread-2")

    assert one.context_id != two.context_id
    assert [c.thread_id for c in ledger.active_contexts("alice")] == [
        "thread-1",
        "thread-2",
    ]


def test_get_context_is_a_pure_read(ledger: ContextLedger) -> None:
    opened = ledger.open_context("alice", "thread-1")

    found = ledger.get_context("alice", "thread-1")

    assert found == opened
    assert len(ledger.history("alice")) == 1


def test_get_context_of_an_unknown_thread_or_user_is_none(
    ledger: ContextLedger,
) -> None:
    ledger.open_context("alice", "thread-1")

    assert ledger.get_context("alice", "thread-2") is None
    assert ledger.get_context("nobody", "thread-1") is None
    assert ledger.history("nobody") == []


def test_update_merges_metadata_and_none_removes_a_key(ledger: ContextLedger) -> None:
    opened = ledger.open_context("alice", "t", metadata={"keep": 1, "drop": 2})

    updated = ledger.update_context(
        "alice", opened.context_id, run_id="run-9", metadata={"drop": None, "new": 3}
    )

    assert updated.metadata == {"keep": 1, "new": 3}
    assert updated.run_id == "run-9"
    assert ledger.history("alice")[-1].kind == "updated"
    details = ledger.history("alice")[-1].details
    assert details.pop("command_id")  # the call that appended it
    assert details.pop("metadata_commitment")  # what the chain covers
    assert details.pop("key_generation") == 0  # the user's first data key
    assert details.pop("metadata_salt")  # what opens it
    assert details == {"metadata": {"drop": None, "new": 3}}


def test_clear_context_ends_it_and_the_thread_then_gets_a_new_one(
    ledger: ContextLedger,
) -> None:
    first = ledger.open_context("alice", "t")

    ledger.clear_context("alice", first.context_id, reason="user logged out")
    second = ledger.open_context("alice", "t")

    assert second.context_id != first.context_id
    cleared = ledger.history("alice")[1]
    assert cleared.kind == "cleared"
    assert cleared.details["reason"] == "user logged out"
    assert set(cleared.details) == {"reason", "command_id"}


def test_clear_user_ends_every_context_and_counts_them(ledger: ContextLedger) -> None:
    for thread in ("a", "b", "c"):
        ledger.open_context("alice", thread)
    ledger.open_context("bob", "a")

    cleared = ledger.clear_user("alice", reason="account deleted")

    assert cleared == 3
    assert ledger.active_contexts("alice") == []
    assert len(ledger.active_contexts("bob")) == 1
    assert ledger.clear_user("alice") == 0


def test_clear_user_of_an_unknown_user_appends_nothing(ledger: ContextLedger) -> None:
    assert ledger.clear_user("nobody") == 0
    assert ledger.history("nobody") == []


def test_contexts_survive_closing_and_reopening_the_ledger(durable_url: str) -> None:
    with ContextLedger.open(durable_url) as first:
        opened = first.open_context("alice", "t", metadata={"k": "v"}, ttl_seconds=3600)

    with ContextLedger.open(durable_url) as second:
        assert second.get_context("alice", "t") == opened
        assert second.open_context("alice", "t").context_id == opened.context_id
        assert [event.kind for event in second.history("alice")] == [
            "created",
            "reused",
        ]
