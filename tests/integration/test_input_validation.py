"""Refused input raises a typed error and appends nothing."""

import enum
from typing import Any

import pytest

from ledger import (
    PLACEHOLDERS,
    ContextLedger,
    ContextLimitExceeded,
    InvalidContextInput,
    LedgerConfigError,
)
from tests.helpers import OpenLedger

BAD_IDS: list[tuple[object, str]] = [
    ("", "at least 1 character"),
    ("x" * 257, "at most 256 characters"),
    (" alice", "whitespace"),
    ("alice\n", "whitespace"),
    ("al\x00ice", "control character"),
    ("al\x1bice", "control character"),
    ("al\ud800ice", "unicode string"),
    (42, "valid string"),
    ("{user_id}", "placeholder"),
    ("${thread_id}", "placeholder"),
    ("NULL", "placeholder"),
]


def _assert_nothing_appended(ledger: ContextLedger, user: str = "alice") -> None:
    assert [e.kind for e in ledger.history(user)] == ["created"]


@pytest.fixture
def seeded(ledger: ContextLedger) -> tuple[ContextLedger, str]:
    return ledger, ledger.open_context("alice", "t").context_id


@pytest.mark.parametrize(("bad", "problem"), BAD_IDS)
@pytest.mark.parametrize("field", ["user_id", "thread_id", "run_id"])
def test_bad_ids_are_refused_by_open_context(
    seeded: tuple[ContextLedger, str], field: str, bad: object, problem: str
) -> None:
    ledger, _ = seeded
    arguments: dict[str, Any] = {"user_id": "alice", "thread_id": "t2", "run_id": "r"}
    arguments[field] = bad

    with pytest.raises(InvalidContextInput, match=problem) as error:
        ledger.open_context(**arguments)

    assert error.value.field == field
    _assert_nothing_appended(ledger)


@pytest.mark.parametrize("field", ["user_id", "thread_id"])
def test_a_missing_user_or_thread_id_is_refused(
    seeded: tuple[ContextLedger, str], field: str
) -> None:
    ledger, _ = seeded
    arguments: dict[str, Any] = {"user_id": "alice", "thread_id": "t2", field: None}

    with pytest.raises(InvalidContextInput, match="valid string"):
        ledger.open_context(**arguments)
    _assert_nothing_appended(ledger)


@pytest.mark.parametrize("placeholder", sorted(PLACEHOLDERS))
def test_every_documented_placeholder_is_refused_in_any_case(
    seeded: tuple[ContextLedger, str], placeholder: str
) -> None:
    ledger, _ = seeded
    for value in (placeholder, placeholder.upper(), placeholder.title()):
        with pytest.raises(InvalidContextInput, match="placeholder"):
            ledger.open_context("alice", value)
    _assert_nothing_appended(ledger)


def test_the_issue_placeholders_are_all_in_the_list() -> None:
    required = {"none", "null", "nil", "undefined", "placeholder", "default"}
    required |= {"unknown", "anonymous", "string", "user_id", "thread_id", "run_id"}
    assert required <= PLACEHOLDERS


BAD_METADATA: list[tuple[object, str]] = [
    ("not a mapping", "valid dictionary"),
    ({1: "int key"}, "valid string"),
    ({"f": float("nan")}, "finite"),
    ({"f": float("inf")}, "finite"),
    ({"s": {1, 2}}, "type set"),
    ({"b": b"bytes"}, "type bytes"),
    ({"o": object()}, "type object"),
    ({"big": 2**64}, "64-bit"),
    ({"deep": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": 1}}}}}}}}}, "deeper"),
    ({"big": "x" * 70_000}, "over the 65536 limit"),
    ({"s": "\ud800"}, "lone surrogate"),
    ({"\ud800": 1}, "lone surrogate"),
    ({"s": "a\x00b"}, "NUL character"),
    ({"nested": [{"a\x00": 1}]}, "NUL character"),
]


@pytest.mark.parametrize(("bad", "problem"), BAD_METADATA)
def test_bad_metadata_is_refused_everywhere(
    seeded: tuple[ContextLedger, str], bad: object, problem: str
) -> None:
    ledger, context_id = seeded

    with pytest.raises(InvalidContextInput, match=problem):
        ledger.open_context("alice", "t2", metadata=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidContextInput, match=problem):
        ledger.open_context("alice", "t", metadata=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidContextInput, match=problem):
        ledger.update_context("alice", context_id, metadata=bad)  # type: ignore[arg-type]
    _assert_nothing_appended(ledger)


def test_metadata_at_the_limits_is_accepted(ledger: ContextLedger) -> None:
    seven_deep: dict[str, Any] = {"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}
    nearly_full = {"s": "x" * 65_000}

    assert (
        ledger.open_context("alice", "t1", metadata=seven_deep).metadata == seven_deep
    )
    assert (
        ledger.open_context("alice", "t2", metadata=nearly_full).metadata == nearly_full
    )


def test_tuples_in_metadata_are_stored_as_lists(ledger: ContextLedger) -> None:
    opened = ledger.open_context("alice", "t", metadata={"pair": (1, 2)})

    assert opened.metadata == {"pair": [1, 2]}


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), "60", True])
def test_bad_ttl_is_refused(seeded: tuple[ContextLedger, str], bad: object) -> None:
    ledger, _ = seeded

    with pytest.raises(InvalidContextInput, match="ttl_seconds"):
        ledger.open_context("alice", "t2", ttl_seconds=bad)  # type: ignore[arg-type]
    _assert_nothing_appended(ledger)


@pytest.mark.parametrize("bad", ["", "r" * 257, None, 5])
def test_bad_reason_is_refused(seeded: tuple[ContextLedger, str], bad: object) -> None:
    ledger, context_id = seeded

    with pytest.raises(InvalidContextInput, match="reason"):
        ledger.clear_context("alice", context_id, reason=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidContextInput, match="reason"):
        ledger.clear_user("alice", reason=bad)  # type: ignore[arg-type]
    _assert_nothing_appended(ledger)


def test_an_error_message_shortens_a_long_value_and_says_what_to_do(
    ledger: ContextLedger,
) -> None:
    with pytest.raises(InvalidContextInput) as error:
        ledger.open_context("u" * 300, "t")

    message = str(error.value)
    assert "(302 chars)" in message
    assert "pass the real id" in message
    assert len(message) < 400


def test_opening_past_the_limit_is_refused_and_appends_nothing(
    open_ledger: OpenLedger,
) -> None:
    ledger = open_ledger(max_contexts_per_user=3)
    for thread in ("a", "b", "c"):
        ledger.open_context("alice", thread)

    with pytest.raises(ContextLimitExceeded, match="already has 3 active contexts"):
        ledger.open_context("alice", "d")

    assert len(ledger.history("alice")) == 3


def test_reusing_a_context_at_the_limit_still_works(open_ledger: OpenLedger) -> None:
    ledger = open_ledger(max_contexts_per_user=2)
    first = ledger.open_context("alice", "a")
    ledger.open_context("alice", "b")

    assert ledger.open_context("alice", "a").context_id == first.context_id


def test_the_limit_is_per_user(open_ledger: OpenLedger) -> None:
    ledger = open_ledger(max_contexts_per_user=1)
    ledger.open_context("alice", "a")

    assert ledger.open_context("bob", "a").user_id == "bob"


def test_clearing_makes_room_under_the_limit(open_ledger: OpenLedger) -> None:
    ledger = open_ledger(max_contexts_per_user=1)
    first = ledger.open_context("alice", "a")
    ledger.clear_context("alice", first.context_id)

    assert ledger.open_context("alice", "b").thread_id == "b"


@pytest.mark.parametrize("bad", [0, -1, True, 2.5])
def test_a_bad_limit_is_a_configuration_error(bad: object) -> None:
    with pytest.raises(LedgerConfigError, match="max_contexts_per_user"):
        ContextLedger.open("memory://", max_contexts_per_user=bad)  # type: ignore[arg-type]


def test_a_bad_default_ttl_is_refused() -> None:
    with pytest.raises(InvalidContextInput, match="ttl_seconds"):
        ContextLedger.open("memory://", default_ttl_seconds=-5)


@pytest.mark.parametrize(("bad", "problem"), BAD_IDS)
def test_bad_context_ids_are_refused_by_update_and_clear(
    seeded: tuple[ContextLedger, str], bad: object, problem: str
) -> None:
    ledger, _ = seeded

    with pytest.raises(InvalidContextInput, match=problem) as updating:
        ledger.update_context("alice", bad, metadata={"k": 1})  # type: ignore[arg-type]
    with pytest.raises(InvalidContextInput, match=problem) as clearing:
        ledger.clear_context("alice", bad)  # type: ignore[arg-type]

    assert updating.value.field == clearing.value.field == "context_id"
    _assert_nothing_appended(ledger)


# A NUL character is refused at the API: PostgreSQL's text and jsonb cannot hold it,
# and a view that could not store one would stall for every user.

NUL_CALLS: list[tuple[str, Any]] = [
    ("metadata value", lambda lg, c: lg.open_context("a", "t2", metadata={"k": "\0"})),
    ("metadata key", lambda lg, c: lg.open_context("a", "t2", metadata={"k\0": 1})),
    ("nested", lambda lg, c: lg.update_context("a", c, metadata={"k": [{"x": "\0"}]})),
    ("clear reason", lambda lg, c: lg.clear_context("a", c, reason="gone\0")),
    ("clear_user reason", lambda lg, c: lg.clear_user("a", reason="\0")),
]


@pytest.mark.parametrize(("where", "call"), NUL_CALLS, ids=[n for n, _ in NUL_CALLS])
def test_a_nul_character_is_refused_and_nothing_is_appended(
    ledger: ContextLedger, where: str, call: Any
) -> None:
    context = ledger.open_context("a", "t1")

    with pytest.raises(InvalidContextInput, match="NUL character"):
        call(ledger, context.context_id)

    _assert_nothing_appended(ledger, "a")


class Colour(enum.StrEnum):
    RED = "red"


class Loud(str):
    def __str__(self) -> str:
        return "LOUD"

    def __hash__(self) -> int:
        return 1


def test_keys_that_become_the_same_string_are_refused(ledger: ContextLedger) -> None:
    with pytest.raises(InvalidContextInput, match="twice"):
        ledger.open_context("alice", "t", metadata={Loud("red"): 1, Colour.RED: 2})

    assert ledger.history("alice") == []
