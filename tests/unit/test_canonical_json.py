"""The canonical encoding (orjson where it gives the same bytes) against the
standard library's, which defines it: the same bytes for every value, the same
errors for the values it refuses."""

import enum
import hashlib
import json
import math
import sys
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger._domain.hashing import canonical_encoding, metadata_commitment

_STDLIB = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def _stdlib(value: Any) -> bytes:
    return _STDLIB.encode(value).encode("utf-8")


def _outcome(encode: Callable[[Any], bytes], value: Any) -> bytes | tuple[type, str]:
    try:
        return encode(value)
    except (TypeError, ValueError, RecursionError) as error:
        return type(error), str(error)


def _same_as_stdlib(value: Any) -> None:
    assert _outcome(canonical_encoding, value) == _outcome(_stdlib, value)


class Text(str):
    pass


class Number(int):
    pass


class Real(float):
    pass


class Mapping(dict[str, Any]):
    pass


class Level(enum.IntEnum):
    HIGH = 3


class Colour(enum.Enum):
    RED = "red"


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


EDGES: list[Any] = [
    1e16,
    1e15,
    9999999999999998.0,
    1e-7,
    1e-5,
    1e-4,
    0.0001,
    2.5e-8,
    5e-324,
    1.7976931348623157e308,
    -1.7976931348623157e308,
    -0.0,
    0.0,
    0.1,
    math.nan,
    math.inf,
    -math.inf,
    {"ttl": math.nan},
    [1.0, math.inf],
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    -(2**63),
    -(2**63) - 1,
    10**100,
    "\ud800",
    {"k": "\udfff"},
    {"\ud800": 1},
    "é ü 中 😀 \u2028 \x00 \x1f \x7f",
    {"é": 1, "e": 2, "😀": 3, "\uffff": 4, "Z": 5, "a": 6},
    {1: "int key"},
    {True: "bool key"},
    {None: "none key"},
    {1.5: "float key"},
    {"a": 1, 2: "b"},
    Text("subclass"),
    {"k": Text("v")},
    {Text("k"): 1},
    Number(7),
    Real(1.5),
    Mapping(a=1),
    Level.HIGH,
    Colour.RED,
    uuid.UUID(int=7),
    datetime(2026, 1, 1, tzinfo=UTC),
    b"bytes",
    (1, "tuple"),
    {"t": (1.5, None)},
    _nested(100),
    _nested(254),
    _nested(255),
    _nested(600),
    True,
    None,
    {},
    [],
]


@pytest.mark.parametrize("value", EDGES, ids=repr)
def test_an_edge_value_encodes_as_the_standard_library_does(value: Any) -> None:
    _same_as_stdlib(value)


def test_a_nesting_deeper_than_the_recursion_limit_fails_as_before() -> None:
    value = _nested(sys.getrecursionlimit() + 100)

    _same_as_stdlib(value)


def test_nan_is_refused_not_written_as_null() -> None:
    with pytest.raises(ValueError, match="Out of range float"):
        canonical_encoding({"ttl_seconds": math.nan})


def test_a_commitment_is_the_same_as_with_the_standard_encoder() -> None:
    metadata = {"turn": 1e-7, "name": "Zoë", "n": [1, 2.5, None]}
    salt = "ab" * 32
    expected = hashlib.sha256(b"ctxledger metadata commitment\n")
    expected.update(bytes.fromhex(salt))
    expected.update(_stdlib(metadata))

    assert metadata_commitment(salt, metadata) == expected.hexdigest()


_CHARACTERS = st.characters(codec=None, exclude_categories=())
_TEXT = st.text(_CHARACTERS, max_size=12) | st.sampled_from(["", "a", "\ud800x"])
_FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [1e16, 1e-5, 1e-7, 5e-324, -0.0, 1.7976931348623157e308]
)
_INTS = st.integers() | st.integers(min_value=2**63 - 2, max_value=2**64 + 2)
_SCALARS = st.none() | st.booleans() | _INTS | _FLOATS | _TEXT
_JSON = st.recursive(
    _SCALARS,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(_TEXT, children, max_size=5)
        | st.dictionaries(st.integers() | st.none(), children, max_size=2)
    ),
    max_leaves=30,
)


@settings(max_examples=1500)
@given(_JSON)
def test_any_json_value_encodes_as_the_standard_library_does(value: Any) -> None:
    _same_as_stdlib(value)


_HEX64 = st.text("0123456789abcdef", min_size=64, max_size=64)
_TIME = st.datetimes(
    min_value=datetime(1970, 1, 1),  # noqa: DTZ001  (hypothesis takes naive bounds)
    max_value=datetime(9999, 12, 31),  # noqa: DTZ001  (hypothesis takes naive bounds)
    timezones=st.just(UTC),
).map(lambda at: at.isoformat().replace("+00:00", "Z"))
_DETAILS = st.fixed_dictionaries(
    {},
    optional={
        "ttl_seconds": st.none() | st.floats(min_value=0, exclude_min=True),
        "reuse_count": st.integers(min_value=0),
        "key_generation": st.integers(min_value=0, max_value=2**62),
        "metadata_commitment": _HEX64,
        "reason": _TEXT,
        "expires_at": _TIME,
        "command_id": _TEXT,
        "request_id": _TEXT,
        "metadata": st.dictionaries(_TEXT, _JSON, max_size=4),
    },
)
_RECORDS = st.fixed_dictionaries(
    {
        "user_id": _TEXT,
        "kind": st.sampled_from(
            ["created", "reused", "updated", "expired", "cleared", "forgotten"]
        ),
        "context_id": st.uuids().map(str) | _TEXT,
        "thread_id": _TEXT,
        "run_id": st.none() | _TEXT,
        "occurred_at": _TIME,
        "version": st.integers(min_value=1, max_value=2**63 - 1),
        "prev_hash": _HEX64,
        "details": _DETAILS,
    }
)


@settings(max_examples=1500)
@given(_RECORDS)
def test_any_event_record_encodes_as_the_standard_library_does(
    record: dict[str, Any],
) -> None:
    _same_as_stdlib(record)
