"""Positions a change feed gives and takes back as ``after``.

A feed of one database gives the log's position, an int, and takes it back as an
int or as its digits (a position that went through a URL's query string).

A feed of a sharded ledger reads each shard's log in order and gives a position
per shard, written as text that JSON, URLs and browsers carry unchanged: each
shard as ``SHARD:POSITION``, joined by dots, e.g. ``0:120.1:57.2:9``. A shard the
feed could not reach when it started at the head is written ``SHARD:head``: a
feed resumed from it starts that shard at its head once it reaches it. A shard
that a position does not name (added after it was given) is read from its start;
so is every shard but shard 0 when ``after`` is a plain position (given before
the ledger had shards: it is shard 0's). A feed of every user may add, for a user
that moved off a shard, how far it read that user's stream there, as
``SHARD:STREAM:POSITION`` (``ledger._sharded_feed_reads``).
"""

import re
from collections.abc import Iterable, Mapping
from uuid import UUID

from ledger._domain import validation
from ledger.errors import InvalidContextInput

Position = int | str
"""What a feed gives with each event: an int (one database) or the text of a
position per shard (a sharded ledger)."""

MAX_TEXT = 65_536
"""The longest position text taken (about 2,500 shards)."""
_DIGITS = re.compile(r"[0-9]{1,18}")
_PART = re.compile(r"([0-9]{1,9}):(?:([0-9a-f]{32}):)?([0-9]{1,18}|head)")
_FIX = "pass the position of the last event a feed of this ledger gave, or None"


def single_position(field: str, value: object) -> int:
    """A position of one database's log: an int of 0 or more, or its digits."""
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    return validation.log_position(field, value)


def sharded_position(field: str, value: object) -> dict[int, int | None]:
    """A sharded feed's position: shard -> position read through (None: at the
    head once reached). A plain position is shard 0's."""
    if isinstance(value, str) and not _DIGITS.fullmatch(value):
        return _parts(field, value)
    return {0: single_position(field, value)}


def _parts(field: str, value: str) -> dict[int, int | None]:
    return {
        shard: position
        for shard, stream, position in _entries(field, value)
        if stream is None
    }


def moved_reads(field: str, value: object) -> dict[tuple[int, UUID], int]:
    """The ``SHARD:STREAM:POSITION`` parts of a sharded feed's position."""
    if not isinstance(value, str) or _DIGITS.fullmatch(value):
        return {}
    return {
        (shard, stream): position or 0
        for shard, stream, position in _entries(field, value)
        if stream is not None
    }


def _entries(field: str, value: str) -> list[tuple[int, UUID | None, int | None]]:
    if len(value) > MAX_TEXT:
        raise InvalidContextInput(field, value, "is too long", _FIX)
    entries: list[tuple[int, UUID | None, int | None]] = []
    seen: set[tuple[int, str | None]] = set()
    for part in value.split("."):
        found = _PART.fullmatch(part)
        if found is None or (found[2] is not None and found[3] == "head"):
            raise InvalidContextInput(
                field, value, "is not SHARD:POSITION joined by dots", _FIX
            )
        key = (int(found[1]), found[2])
        if key in seen:
            raise InvalidContextInput(field, value, f"names shard {key[0]} twice", _FIX)
        seen.add(key)
        stream = None if found[2] is None else UUID(hex=found[2])
        entries.append((key[0], stream, None if found[3] == "head" else int(found[3])))
    return entries


def unknown_shards(
    field: str, value: object, positions: Mapping[int, object], shards: Iterable[int]
) -> None:
    """Refuses a position that names a shard the ledger does not have."""
    unknown = sorted(set(positions) - set(shards))
    if unknown:
        raise InvalidContextInput(
            field,
            value,
            f"names shard {unknown[0]}, which this ledger does not have",
            _FIX,
        )


def position_text(positions: Mapping[int, int | None], more: Iterable[str] = ()) -> str:
    """The text of a sharded feed's position, by shard (then ``more`` parts)."""
    return ".".join(
        [
            f"{shard}:{'head' if positions[shard] is None else positions[shard]}"
            for shard in sorted(positions)
        ]
        + list(more)
    )
