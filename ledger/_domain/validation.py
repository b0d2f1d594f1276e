"""Checks on every argument that reaches the ledger, before anything is appended.

The rules are pydantic types; a ``ValidationError`` becomes ``InvalidContextInput``.
"""

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

import msgpack
from pydantic import AfterValidator, Field, Strict, TypeAdapter, ValidationError

from ledger._domain.models import (
    EVENT_KINDS,
    EVICTED,
    ON_LIMIT,
    EventKind,
    OnLimit,
    UtcDatetime,
)
from ledger._domain.plain_json import (
    MAX_METADATA_DEPTH,
    contents,
    plain_json,
    plain_text,
)
from ledger.errors import InvalidContextInput, LedgerConfigError

MAX_ID_CHARS = 256
MAX_REASON_CHARS = 256
MAX_METADATA_BYTES = 64 * 1024
MAX_TTL_SECONDS = 100 * 366 * 24 * 3600

PLACEHOLDERS = frozenset(
    {
        "none",
        "null",
        "nil",
        "undefined",
        "nan",
        "n/a",
        "placeholder",
        "default",
        "unknown",
        "anonymous",
        "string",
        "str",
        "user_id",
        "userid",
        "thread_id",
        "threadid",
        "run_id",
        "runid",
        "context_id",
        "[object object]",
    }
)
"""Values refused as ids, compared case-insensitively, also when wrapped in
``{}``, ``{{}}``, ``<>``, ``${}`` or ``[]`` as by an unformatted template."""

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")  # Unicode category Cc
_WRAPPERS = (("${", "}"), ("{{", "}}"), ("{", "}"), ("<", ">"), ("[", "]"))


def _unwrapped(text: str) -> str:
    if not text or text[0] not in "${<[":
        return text
    for start, end in _WRAPPERS:
        if (
            text.startswith(start)
            and text.endswith(end)
            and len(text) > len(start + end)
        ):
            return text[len(start) : -len(end)].strip()
    return text


def _check_id(value: str) -> str:
    if value != value.strip():
        raise ValueError("has leading or trailing whitespace")
    if _CONTROL.search(value):
        raise ValueError("contains a control character")
    lowered = value.lower()
    if lowered in PLACEHOLDERS or _unwrapped(lowered) in PLACEHOLDERS:
        raise ValueError("is a placeholder, not a real id")
    return value


def _check_metadata(value: dict[str, Any]) -> dict[str, Any]:
    normalized: dict[str, Any] = plain_json(value, "metadata", 1)
    try:
        size = len(msgpack.packb(normalized, use_bin_type=True))
    except (TypeError, ValueError, OverflowError) as error:
        raise ValueError(f"cannot be encoded: {error}") from None
    if size > MAX_METADATA_BYTES:
        raise ValueError(
            f"is {size} bytes encoded, over the {MAX_METADATA_BYTES} limit"
        )
    return normalized


def check_merged_size(merged: dict[str, Any], patch: dict[str, Any]) -> None:
    """Refuses a patch that would make a context's metadata too large.

    The error carries the caller's patch, never ``merged``: that shares nested
    values with the ledger's cached state.
    """
    size = len(msgpack.packb(merged, use_bin_type=True))
    if size > MAX_METADATA_BYTES:
        raise InvalidContextInput(
            "metadata",
            patch,
            f"would make the context's metadata {size} bytes encoded, over the "
            f"{MAX_METADATA_BYTES} limit",
            "remove keys (give them as None) or store large data elsewhere",
        )


Identifier = Annotated[
    str,
    Strict(),
    Field(min_length=1, max_length=MAX_ID_CHARS),
    AfterValidator(_check_id),
]
Metadata = Annotated[dict[str, Any], Strict(), AfterValidator(_check_metadata)]
TtlSeconds = Annotated[
    float, Strict(), Field(gt=0, le=MAX_TTL_SECONDS, allow_inf_nan=False)
]
Reason = Annotated[
    str,
    Strict(),
    Field(min_length=1, max_length=MAX_REASON_CHARS),
    AfterValidator(lambda text: plain_text(text, "reason")),
]

_IDENTIFIER: TypeAdapter[str] = TypeAdapter(Identifier)
_METADATA: TypeAdapter[dict[str, Any]] = TypeAdapter(Metadata)
_TTL: TypeAdapter[float] = TypeAdapter(TtlSeconds)
_REASON: TypeAdapter[str] = TypeAdapter(Reason)
_TIME: TypeAdapter[datetime] = TypeAdapter(Annotated[UtcDatetime, Strict()])
_KIND: TypeAdapter[EventKind] = TypeAdapter(EventKind)

_FIXES = {
    "id": (
        f"pass the real id: 1 to {MAX_ID_CHARS} characters, no control characters, "
        "no surrounding whitespace, not a placeholder such as 'none' or 'undefined'"
    ),
    "metadata": (
        "pass a dict with str keys and values that are None, bool, int, finite float, "
        "str (no NUL characters), or lists and dicts of these, at most "
        f"{MAX_METADATA_DEPTH} levels deep and {MAX_METADATA_BYTES // 1024} KiB encoded"
    ),
    "ttl": (
        "pass a number of seconds greater than 0 and at most 100 years, "
        "or None for the default (no expiry unless a default is set)"
    ),
    "reason": (
        f"pass a non-empty reason of at most {MAX_REASON_CHARS} characters, "
        "without NUL characters"
    ),
    "time": "pass a timezone-aware datetime, e.g. datetime(2026, 1, 1, tzinfo=UTC)",
    "kind": f"pass one of {', '.join(EVENT_KINDS)}",
    "int": "pass a whole number of 1 or more, or None for no limit",
}


def _validate(adapter: TypeAdapter[Any], field: str, fix: str, value: object) -> Any:
    try:
        return adapter.validate_python(value)
    except ValidationError as error:
        first = error.errors()[0]
        problem = first["msg"].removeprefix("Value error, ")
        problem = problem[:1].lower() + problem[1:]
        if first["loc"]:
            problem = f"at {list(first['loc'])}: {problem}"
        raise InvalidContextInput(field, value, problem, _FIXES[fix]) from None
    except OverflowError:  # a time near the limits, moved to UTC
        raise InvalidContextInput(
            field,
            value.isoformat() if isinstance(value, datetime) else value,
            "is out of range once converted to UTC",
            "pass a time that stays within the years 1 to 9999 in UTC",
        ) from None


def identifier(field: str, value: object) -> str:
    """A user, thread, run or context id, checked."""
    result: str = _validate(_IDENTIFIER, field, "id", value)
    return result


def optional_identifier(field: str, value: object) -> str | None:
    """An optional id: None passes, anything else must be a valid id."""
    return None if value is None else identifier(field, value)


def metadata(value: object) -> dict[str, Any]:
    """Context metadata, checked; None means no metadata."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        # Read once, as a plain dict; keys that are the same string twice (a str
        # subclass beside its plain value) are refused, not silently merged.
        try:
            items = contents(value, "metadata")
        except ValueError as error:
            raise InvalidContextInput(
                "metadata", type(value).__name__, str(error), _FIXES["metadata"]
            ) from None
        plain = [str.__str__(key) for key, _ in items if isinstance(key, str)]
        if len(set(plain)) < len(plain):
            twice = next(key for key in plain if plain.count(key) > 1)
            raise InvalidContextInput(
                "metadata",
                value,
                f"has the key {twice!r} twice",
                "give each key once",
            )
        try:
            value = dict(items)
        except TypeError as error:  # a key that cannot be hashed
            raise InvalidContextInput(
                "metadata", type(value).__name__, str(error), _FIXES["metadata"]
            ) from None
    result: dict[str, Any] = _validate(_METADATA, "metadata", "metadata", value)
    return result


def ttl_seconds(value: object) -> float | None:
    """A time to live in seconds, checked; None means the ledger's default."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidContextInput("ttl_seconds", value, "is a bool", _FIXES["ttl"])
    result: float = _validate(_TTL, "ttl_seconds", "ttl", value)
    return result


def reason(value: object) -> str:
    """The reason given for a clear, checked."""
    result: str = _validate(_REASON, "reason", "reason", value)
    return result


def clear_reason(value: object) -> str:
    """The reason given for a clear, checked: not EVICTED, which is the ledger's
    own (so the evictions the views count are the ledger's)."""
    result = reason(value)
    if result == EVICTED:
        raise InvalidContextInput(
            "reason",
            value,
            "is reserved for the contexts the ledger evicts (on_limit='evict')",
            "give another reason, such as 'cleared' (the default)",
        )
    return result


def on_limit(value: object) -> OnLimit:
    """A limit policy of the ledger (a setting: LedgerConfigError)."""
    for policy in ON_LIMIT:
        if isinstance(value, str) and value == policy:
            return policy
    raise LedgerConfigError(
        f"on_limit={value!r} is not a limit policy; pass 'refuse' (a new context "
        "past max_contexts_per_user raises ContextLimitExceeded) or 'evict' (the "
        "user's least recently used contexts are cleared to make room)"
    )


def aware_time(field: str, value: object) -> datetime:
    """A timezone-aware datetime, in UTC."""
    result: datetime = _validate(_TIME, field, "time", value)
    return result


def event_kind(value: object) -> EventKind:
    """One of the event kinds."""
    result: EventKind = _validate(_KIND, "kind", "kind", value)
    return result


def period(since: object, until: object) -> tuple[datetime | None, datetime | None]:
    """A period of time: each end optional, ``until`` not before ``since``."""
    start = None if since is None else aware_time("since", since)
    end = None if until is None else aware_time("until", until)
    if start is not None and end is not None and end < start:
        raise InvalidContextInput(
            "until",
            end.isoformat(),
            f"is before since={start.isoformat()}",
            "swap them",
        )
    return start, end


def log_position(field: str, value: object) -> int:
    """A position in the ledger's log: a whole number of 0 or more (not a bool)."""
    if isinstance(value, int) and not isinstance(value, bool):
        plain = int.__index__(value)
        if plain >= 0:
            return plain
    raise InvalidContextInput(
        field, value, "is not an int of 0 or more", "pass a position from the log"
    )


def positive_int(field: str, value: object, *, setting: bool = False) -> int:
    """A whole number of 1 or more (not a bool). A ``setting`` of the ledger or its
    views is refused with LedgerConfigError, an argument with InvalidContextInput."""
    if isinstance(value, int) and not isinstance(value, bool):
        plain = int.__index__(value)
        if plain >= 1:
            return plain
    if setting:
        raise LedgerConfigError(f"{field}={value!r} must be an int of 1 or more")
    raise InvalidContextInput(field, value, "is not an int of 1 or more", _FIXES["int"])
