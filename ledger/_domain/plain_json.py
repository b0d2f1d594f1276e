"""Metadata as plain JSON: the copy of a caller's value that a replay reads back
and the chain hashes, or ValueError saying where it cannot be stored."""

import math
from collections.abc import Mapping
from typing import Any

MAX_METADATA_DEPTH = 8
_INT64 = 2**63


def plain_json(value: object, path: str, depth: int) -> Any:
    """A plain-JSON copy of a metadata value, or ValueError.

    Tuples become lists and subclasses of str, int and float (enums, say) their
    plain values, keys included, so what is returned is what a replay will read
    back and what the chain hashes. ``depth`` counts the containers around
    ``value``; metadata itself is the first.
    """
    if isinstance(value, Mapping | list | tuple) and depth > MAX_METADATA_DEPTH:
        raise ValueError(f"{path} nests deeper than {MAX_METADATA_DEPTH} levels")
    if isinstance(value, Mapping):
        return _plain_mapping(value, path, depth)
    if isinstance(value, list | tuple):
        return [
            plain_json(item, f"{path}[{i}]", depth + 1)
            for i, item in enumerate(_items(value, path))
        ]
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return plain_text(value, path)
    if isinstance(value, float | int):
        return _plain_number(value, path)
    raise ValueError(f"{path} is of type {type(value).__name__}, which is not stored")


def _plain_mapping(
    value: Mapping[object, object], path: str, depth: int
) -> dict[str, Any]:
    """A mapping as a plain dict: str keys, each once, its values normalized."""
    result = {}
    for key, item in contents(value, path):
        if not isinstance(key, str):
            raise ValueError(f"{path} has a key {key!r} that is not a str")
        plain = plain_text(key, f"{path} key")
        if plain in result:
            raise ValueError(f"{path} has the key {plain!r} twice")
        result[plain] = plain_json(item, f"{path}[{plain!r}]", depth + 1)
    return result


def _plain_number(value: float, path: str) -> float | int:
    """A plain float (finite) or int (signed 64-bit) of the same value.

    Subclasses become plain values first, so the checks see what will be stored.
    """
    if isinstance(value, float):
        number = value if type(value) is float else float.__float__(value)
        if not math.isfinite(number):
            raise ValueError(f"{path} is {number!r}; only finite numbers are stored")
        return number
    integer = value if type(value) is int else int.__index__(value)
    if not -_INT64 <= integer < _INT64:
        raise ValueError(f"{path} is an integer outside the signed 64-bit range")
    return integer


def plain_text(value: str, path: str) -> str:
    """A plain str of the same characters; NUL and lone surrogates are refused
    (PostgreSQL's text and jsonb cannot hold the first, UTF-8 the second)."""
    plain = value if type(value) is str else str.__str__(value)
    if "\x00" in plain:
        raise ValueError(
            f"{path} contains a NUL character (\\x00), which is not stored"
        )
    try:
        plain.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            f"{path} contains a lone surrogate, which is not valid UTF-8"
        ) from None
    return plain


def contents(value: Mapping[Any, Any], path: str) -> list[tuple[Any, Any]]:
    """The mapping's items, read once; a mapping that fails to give them is
    refused with ValueError instead of letting its own error through."""
    try:
        return list(value.items())
    except Exception as error:  # noqa: BLE001  (any error of the caller's type)
        raise ValueError(f"{path} could not be read: {error!r}") from None


def _items(value: list[Any] | tuple[Any, ...], path: str) -> list[Any]:
    try:
        return list(value)
    except Exception as error:  # noqa: BLE001  (any error of the caller's type)
        raise ValueError(f"{path} could not be read: {error!r}") from None
