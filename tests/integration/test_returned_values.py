"""What the API returns is a value: changing it changes nothing stored; subclasses of
builtins (enums, str, int and float) are stored and returned as plain values."""

import enum

import pytest
from freezegun import freeze_time

from ledger import ContextLedger, InvalidContextInput, LedgerConfigError
from ledger._store.application import SNAPSHOT_INTERVAL


def test_changing_a_returned_context_does_not_change_the_ledger(
    ledger: ContextLedger,
) -> None:
    opened = ledger.open_context("alice", "t", metadata={"a": 1, "nested": {"b": [1]}})
    opened.metadata["injected"] = True
    opened.metadata["nested"]["b"].append(2)
    ledger.get_context("alice", "t").metadata["again"] = 1  # type: ignore[union-attr]
    ledger.active_contexts("alice")[0].metadata.clear()

    reused = ledger.open_context("alice", "t", metadata={"c": 3})

    assert reused.metadata == {"a": 1, "nested": {"b": [1]}, "c": 3}


def test_state_loaded_from_a_snapshot_equals_the_replayed_state(
    sqlite_url: str,
) -> None:
    with ContextLedger.open(sqlite_url) as ledger, freeze_time("2026-02-01") as clock:
        for n in range(SNAPSHOT_INTERVAL * 2 + 7):
            ledger.open_context(
                "alice", f"t{n % 3}", metadata={"n": n}, ttl_seconds=600
            )
            clock.tick(1)
        before = ledger.active_contexts("alice")
        last_hash_chain = [e.prev_hash for e in ledger.history("alice")]

    with ContextLedger.open(sqlite_url) as reopened, freeze_time("2026-02-01 00:03:34"):
        after = reopened.active_contexts("alice")
        reused = reopened.open_context("alice", "t0")
        history = reopened.history("alice")

    assert after == before
    assert reused.reuse_count == before[0].reuse_count + 1
    assert [e.prev_hash for e in history[:-1]] == last_hash_chain
    assert len(history) == SNAPSHOT_INTERVAL * 2 + 8


def test_the_merged_metadata_of_a_context_is_limited_too(ledger: ContextLedger) -> None:
    opened = ledger.open_context("alice", "t", metadata={"a": "x" * 40_000})

    with pytest.raises(InvalidContextInput, match="over the 65536 limit"):
        ledger.update_context("alice", opened.context_id, metadata={"b": "y" * 40_000})
    with pytest.raises(InvalidContextInput, match="over the 65536 limit"):
        ledger.open_context("alice", "t", metadata={"b": "y" * 40_000})

    assert len(ledger.history("alice")) == 1
    replaced = ledger.update_context(
        "alice", opened.context_id, metadata={"a": None, "b": "y" * 40_000}
    )
    assert set(replaced.metadata) == {"b"}


@pytest.mark.parametrize("ttl", [1e12, 100 * 366 * 24 * 3600 + 1])
def test_a_ttl_beyond_100_years_is_refused(ledger: ContextLedger, ttl: float) -> None:
    with pytest.raises(InvalidContextInput, match="at most 100 years"):
        ledger.open_context("alice", "t", ttl_seconds=ttl)
    with pytest.raises(InvalidContextInput, match="at most 100 years"):
        ContextLedger.open("memory://", default_ttl_seconds=ttl)


def test_a_100_year_ttl_keeps_the_thread_usable(ledger: ContextLedger) -> None:
    with freeze_time("2026-01-01") as clock:
        ledger.open_context("alice", "t", ttl_seconds=100 * 366 * 24 * 3600)
        clock.tick(7200)

        assert ledger.open_context("alice", "t").reuse_count == 1


def _nested(levels: int) -> dict[str, object]:
    """Metadata that is ``levels`` dicts deep, the metadata itself included."""
    value: dict[str, object] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"k": value}
    return value


def test_metadata_may_be_eight_containers_deep_but_not_nine(
    ledger: ContextLedger,
) -> None:
    assert ledger.open_context("alice", "t", metadata=_nested(8)).metadata == _nested(8)
    with pytest.raises(InvalidContextInput, match="deeper than 8 levels"):
        ledger.open_context("alice", "u", metadata=_nested(9))


class Colour(str, enum.Enum):  # noqa: UP042  (the mixin str() gets wrong)
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


def test_enum_values_are_stored_and_returned_as_plain_values(
    durable_url: str,
) -> None:
    with ContextLedger.open(durable_url) as ledger:
        opened = ledger.open_context(
            "alice", "t", metadata={"c": Colour.RED, "l": Level.HIGH}
        )
    with ContextLedger.open(durable_url) as reopened:
        loaded = reopened.get_context("alice", "t")

    assert opened.metadata == {"c": "red", "l": 3}
    assert [type(v) for v in opened.metadata.values()] == [str, int]
    assert loaded is not None
    assert loaded.metadata == opened.metadata


@pytest.mark.parametrize("clock", ["now", 0])
def test_a_clock_that_is_not_callable_is_refused(clock: object) -> None:
    with pytest.raises(LedgerConfigError, match="not callable"):
        ContextLedger.open("memory://", clock=clock)  # type: ignore[arg-type]


@pytest.mark.parametrize("reading", ["2026-01-01", 0, None])
def test_a_clock_that_returns_no_datetime_is_refused(reading: object) -> None:
    def clock() -> object:
        return reading

    with ContextLedger.open("memory://", clock=clock) as ledger:  # type: ignore[arg-type]
        with pytest.raises(LedgerConfigError, match="not a timezone-aware datetime"):
            ledger.open_context("alice", "t")
        assert ledger.history("alice") == []


def test_a_refused_oversize_merge_reports_the_patch_not_the_ledgers_state(
    ledger: ContextLedger,
) -> None:
    opened = ledger.open_context("alice", "t", metadata={"items": ["x" * 30_000]})
    patch = {"more": "y" * 40_000}

    with pytest.raises(InvalidContextInput) as error:
        ledger.update_context("alice", opened.context_id, metadata=patch)
    assert error.value.value == patch

    stored = ledger.get_context("alice", "t")
    assert stored is not None
    assert stored.metadata == {"items": ["x" * 30_000]}


class SneakyFloat(float):
    def __float__(self) -> float:
        return float("nan")


class SneakyInt(int):
    def __index__(self) -> int:
        return 2**70


@pytest.mark.parametrize(
    ("value", "stored"), [(SneakyFloat(1.0), 1.0), (SneakyInt(1), 1)]
)
def test_number_subclasses_are_stored_as_their_own_values_not_their_overrides(
    durable_url: str, value: object, stored: object
) -> None:
    with ContextLedger.open(durable_url) as ledger:
        opened = ledger.open_context("alice", "t", metadata={"v": value})
    with ContextLedger.open(durable_url) as reopened:
        loaded = reopened.get_context("alice", "t")

    assert loaded is not None
    assert opened.metadata == loaded.metadata == {"v": stored}
    assert type(loaded.metadata["v"]) is type(stored)


# Subclasses of str, int and float become plain values, keys included.


class StrColour(enum.StrEnum):
    RED = "red"


class Loud(str):
    def __str__(self) -> str:
        return "LOUD"

    def __hash__(self) -> int:
        return 1


class Ratio(float):
    def __repr__(self) -> str:
        return "ratio"


def test_builtin_subclasses_at_any_depth_are_stored_as_plain_values(
    durable_url: str,
) -> None:
    metadata = {
        "top": {StrColour.RED: Level.HIGH, Loud("k"): [Ratio(0.5), StrColour.RED]},
        Loud("outer"): {"deep": {StrColour.RED: {Loud("x"): Level.HIGH}}},
    }

    with ContextLedger.open(durable_url) as ledger:
        context = ledger.open_context("alice", "t", metadata=metadata)
        updated = ledger.update_context("alice", context.context_id, metadata=metadata)
    with ContextLedger.open(durable_url) as again:  # a replay from the store
        replayed = again.get_context("alice", "t")
        report = again.verify_chain()

    expected = {
        "top": {"red": 3, "k": [0.5, "red"]},
        "outer": {"deep": {"red": {"x": 3}}},
    }
    assert context.metadata == expected
    assert replayed == updated
    assert replayed is not None
    assert _plain(replayed.metadata)
    assert _plain(context.metadata)
    assert report.holds, report


def _plain(value: object) -> bool:
    if isinstance(value, dict):
        return all(type(k) is str and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(item) for item in value)
    return type(value) in (str, int, float, bool, type(None))
