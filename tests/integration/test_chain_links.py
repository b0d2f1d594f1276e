"""Each user's events are linked by the SHA-256 of the previous event."""

from freezegun import freeze_time

from ledger import ContextLedger, LedgerEvent
from ledger._domain.hashing import (
    GENESIS_HASH,
    canonical_encoding,
    chain_hash,
    record_hash,
)


def _busy_history(ledger: ContextLedger, user: str) -> list[LedgerEvent]:
    with freeze_time("2026-05-01 08:00:00") as clock:
        first = ledger.open_context(user, "a", run_id="r1", metadata={"k": [1, 2.5]})
        ledger.open_context(user, "a", metadata={"k": None, "j": "é"})
        ledger.update_context(user, first.context_id, run_id="r2", metadata={"x": {}})
        ledger.open_context(user, "b", ttl_seconds=5)
        clock.tick(6)
        ledger.expire_due()
        ledger.clear_context(user, first.context_id, reason="done")
    return ledger.history(user)


def _links(history: list[LedgerEvent]) -> list[bool]:
    expected = [GENESIS_HASH] + [
        chain_hash(event.model_dump(mode="json")) for event in history[:-1]
    ]
    return [
        event.prev_hash == want for event, want in zip(history, expected, strict=True)
    ]


def test_every_kind_of_event_is_linked_to_the_previous_one(
    ledger: ContextLedger,
) -> None:
    history = _busy_history(ledger, "alice")

    assert sorted({e.kind for e in history}) == [
        "cleared",
        "created",
        "expired",
        "reused",
        "updated",
    ]
    assert all(_links(history))


def test_the_first_event_of_each_user_starts_a_new_chain(ledger: ContextLedger) -> None:
    _busy_history(ledger, "alice")
    bob = _busy_history(ledger, "bob")

    assert bob[0].prev_hash == GENESIS_HASH
    assert all(_links(bob))


def test_altering_removing_or_reordering_an_event_breaks_the_chain(
    ledger: ContextLedger,
) -> None:
    history = _busy_history(ledger, "alice")
    altered = history[2].model_copy(update={"details": {"metadata": {"x": {"y": 1}}}})

    assert not all(_links([*history[:2], altered, *history[3:]]))
    assert not all(_links(history[:2] + history[3:]))
    assert not all(_links([history[0], history[2], history[1], *history[3:]]))


def test_canonical_encoding_ignores_key_order_but_not_values() -> None:
    one = canonical_encoding({"b": 1, "a": [1, {"y": 2, "x": "é"}]})
    two = canonical_encoding({"a": [1, {"x": "é", "y": 2}], "b": 1})

    assert one == two == '{"a":[1,{"x":"é","y":2}],"b":1}'.encode()
    assert record_hash({"a": 1}) != record_hash({"a": 2})
