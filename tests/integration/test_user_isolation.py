"""A context is only ever found under the user who owns it."""

import pytest

from ledger import ContextLedger, ContextNotFound

USERS = [f"user-{n}" for n in range(10)]
THREADS = ["support", "billing", "chat"]


def _fill(ledger: ContextLedger) -> None:
    for user in USERS:
        for thread in THREADS:
            ledger.open_context(
                user,
                thread,
                run_id=f"run-{user}",
                metadata={"owner": user, "t": thread},
            )
            ledger.open_context(user, thread, metadata={"seen_by": user})


def test_replaying_each_user_shows_no_trace_of_another_user(
    ledger: ContextLedger,
) -> None:
    _fill(ledger)

    for user in USERS:
        others = set(USERS) - {user}
        history = ledger.history(user)
        assert len(history) == 2 * len(THREADS)
        text = " ".join(event.model_dump_json() for event in history)
        assert {event.user_id for event in history} == {user}
        assert not any(f'"{other}"' in text for other in others)


def test_users_with_the_same_thread_ids_get_their_own_contexts(
    ledger: ContextLedger,
) -> None:
    _fill(ledger)

    ids = [ledger.get_context(user, "support") for user in USERS]

    assert len({context.context_id for context in ids if context}) == len(USERS)
    assert all(c is not None and c.metadata["owner"] == c.user_id for c in ids)


def test_another_users_context_id_is_not_found_like_an_unknown_id(
    ledger: ContextLedger,
) -> None:
    mallory_id = ledger.open_context("mallory", "t").context_id
    ledger.open_context("alice", "t")

    with pytest.raises(ContextNotFound) as other:
        ledger.update_context("alice", mallory_id, metadata={"x": 1})
    with pytest.raises(ContextNotFound) as unknown:
        ledger.update_context("alice", "no-such-context", metadata={"x": 1})

    assert str(other.value).replace(mallory_id, "ID") == str(unknown.value).replace(
        "'no-such-context'", "'ID'"
    )


def test_another_users_context_cannot_be_cleared_and_stays_untouched(
    ledger: ContextLedger,
) -> None:
    victim = ledger.open_context("victim", "t", metadata={"secret": 1})

    with pytest.raises(ContextNotFound, match="no active context"):
        ledger.clear_context("attacker", victim.context_id)

    assert ledger.get_context("victim", "t") == victim
    assert ledger.history("attacker") == []
    assert len(ledger.history("victim")) == 1
