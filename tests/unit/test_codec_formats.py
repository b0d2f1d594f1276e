"""The codec's registry of stored formats, class-version upgrades and shapes."""

from datetime import UTC, datetime
from typing import Any, ClassVar
from uuid import uuid4

import pytest

from ledger._domain.events import (
    EVENT_CLASSES,
    CarriesMetadata,
    ContextCleared,
    ContextEvent,
)
from ledger._store.codec import (
    CALL_IDS,
    FORMAT,
    SHAPES,
    SNAPSHOT_FORMAT,
    check_format,
    check_generation,
    shape_of,
    upgrade,
)


@pytest.mark.parametrize("written", [1, FORMAT])
def test_every_event_format_this_release_wrote_is_read(written: int) -> None:
    assert check_format(written) == written


@pytest.mark.parametrize("written", [0, -1, True, False, 2.5, "2", None, b"\x02"])
def test_a_format_no_release_wrote_is_refused_as_damage(written: object) -> None:
    with pytest.raises(ValueError, match="is not a format"):
        check_format(written)


def test_a_newer_format_is_refused_with_the_advice_to_upgrade() -> None:
    with pytest.raises(ValueError, match=r"by a newer release.*upgrade ctxledger"):
        check_format(FORMAT + 1)


def test_snapshots_are_read_up_to_their_own_newest_format() -> None:
    assert check_format(SNAPSHOT_FORMAT, SNAPSHOT_FORMAT) == SNAPSHOT_FORMAT
    with pytest.raises(ValueError, match="newer release"):
        check_format(SNAPSHOT_FORMAT + 1, SNAPSHOT_FORMAT)


@pytest.mark.parametrize("generation", [-1, True, "0", 2**62, 1.0, None])
def test_a_key_generation_that_is_not_one_is_refused(generation: object) -> None:
    with pytest.raises(ValueError, match="is not a generation"):
        check_generation(generation)


def test_every_event_class_of_this_release_has_a_fast_shape() -> None:
    assert set(SHAPES) == {cls.TOPIC for cls in EVENT_CLASSES}


def test_a_shape_holds_each_models_fields_but_the_stream_ids_and_defaults() -> None:
    for cls in EVENT_CLASSES:
        shape = SHAPES[cls.TOPIC]
        personal = set(CarriesMetadata.model_fields) - set(ContextEvent.model_fields)
        required = {
            name
            for name, field in cls.model_fields.items()
            if field.is_required()
            and name not in {"originator_id", "originator_version"}
            and name not in personal
        }
        assert shape.keys == required, cls.__name__
        assert shape.carries_metadata == issubclass(cls, CarriesMetadata)


class _ClearedWithNote(ContextCleared):
    note: str


class _ClearedWithTags(ContextCleared):
    tags: list[str]


def test_a_field_added_to_a_model_joins_its_stored_shape() -> None:
    shape = shape_of(_ClearedWithNote)

    assert shape is not None
    assert ("note", frozenset({str})) in shape.own
    assert "note" in shape.keys


def test_a_field_of_a_type_without_a_check_leaves_the_class_to_the_mapper() -> None:
    assert shape_of(_ClearedWithTags) is None


def test_call_ids_are_the_ids_stored_only_when_set() -> None:
    assert CALL_IDS == ("command_id", "request_id")


class _ClearedV3(ContextCleared):
    class_version: ClassVar[int] = 3

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state["reason"] = f"v2:{state['reason']}"

    @staticmethod
    def upcast_v2_v3(state: dict[str, Any]) -> None:
        state["reason"] = f"v3:{state['reason']}"


def _state(**changes: Any) -> dict[str, Any]:
    return {
        "originator_id": uuid4(),
        "originator_version": 2,
        "timestamp": datetime(2026, 1, 1, tzinfo=UTC),
        "user_id": "alice",
        "context_id": "c1",
        "thread_id": "t1",
        "run_id": None,
        "prev_hash": "0" * 64,
        "reason": "done",
        **changes,
    }


def test_an_older_class_version_is_upcast_step_by_step_keeping_its_written_form() -> (
    None
):
    state = _state(class_version=1)

    written = upgrade(_ClearedV3, state)

    assert state["reason"] == "v3:v2:done"
    assert "class_version" not in state
    assert written is not None
    assert written["details"]["reason"] == "done"


def test_the_current_class_version_is_read_as_written() -> None:
    state = _state(class_version=3)

    assert upgrade(_ClearedV3, state) is None
    assert state["reason"] == "done"


def test_a_class_version_that_is_not_a_number_is_refused() -> None:
    with pytest.raises(TypeError, match="is not a version"):
        upgrade(_ClearedV3, _state(class_version="x"))


def test_a_missing_upcast_step_is_an_error_of_decoding() -> None:
    class _NoSteps(ContextCleared):
        class_version: ClassVar[int] = 2

    with pytest.raises(AttributeError):
        upgrade(_NoSteps, _state())
