"""Personal data in the views: sealed under the user's data key, as in the ledger.

A view keeps metadata as ``sealed:<generation>:<base64>`` text, sealed with the
same per-user key as the events it came from; or, where it keeps an event's own
sealed value unchanged (the audit view), as ``sealed:event:<generation>:<base64>``,
which opens as the event's ``[metadata, salt]``. Once ``forget_user`` destroys that
key, the view's copy is erased with the ledger's, without rewriting the view, and
no plaintext metadata is ever written to the views' tables. Values of events
stored before sealing (format 1) are kept as plain JSON, as the ledger keeps them.
The keys, places and ciphers are the ledger's (``projections._store.Keys``).
"""

import base64
import binascii
import json
from collections.abc import Iterable
from typing import Any, cast

from projections._store import Keys

PREFIX = "sealed:"
ERASED = f"{PREFIX}erased"
"""The cell of a value whose key was destroyed before the view stored it."""
_EVENT_CELL = f"{PREFIX}event:"


def event_cell(generation: int, sealed: bytes) -> str:
    """An event's sealed value as stored (``[metadata, salt]`` in msgpack, sealed
    by the ledger) as a view's cell: no key is needed to write it."""
    text = binascii.b2a_base64(sealed, newline=False).decode("ascii")
    return f"{_EVENT_CELL}{generation}:{text}"


def seal_json(keys: Keys, user_id: str, generation: int, value: Any) -> str | None:
    """``value`` as JSON text sealed under the user's key of ``generation``; None
    if that key is destroyed (the value is erased)."""
    plain = json.dumps(value, ensure_ascii=False).encode("utf-8")
    sealed = keys.seal_cell(user_id, generation, plain)
    if sealed is None:
        return None
    return f"{PREFIX}{generation}:{base64.b64encode(sealed).decode('ascii')}"


def prefetch(keys: Keys, cells: Iterable[tuple[str, object]]) -> None:
    """Looks up the keys of many sealed cells (user id, cell) at once."""
    wanted = []
    for user_id, cell in cells:
        if is_sealed(cell) and cell != ERASED:
            text = cast(str, cell)
            start = len(_EVENT_CELL) if text.startswith(_EVENT_CELL) else len(PREFIX)
            generation = text[start:].partition(":")[0]
            if generation.isdigit():
                wanted.append((user_id, int(generation)))
    keys.prefetch(wanted)


def is_sealed(cell: object) -> bool:
    return isinstance(cell, str) and cell.startswith(PREFIX)


def open_json(keys: Keys, user_id: str, cell: str) -> tuple[bool, Any]:
    """(True, value) for a sealed cell whose key exists; (False, None) once the
    key is destroyed. ValueError if the cell is not one this module wrote."""
    if cell == ERASED:
        return False, None
    of_event = cell.startswith(_EVENT_CELL)
    start = len(_EVENT_CELL) if of_event else len(PREFIX)
    generation_text, _, payload = cell[start:].partition(":")
    generation = int(generation_text)  # ValueError if not a number
    try:
        sealed = base64.b64decode(payload.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as error:
        msg = f"a sealed cell is not base64: {error}"
        raise ValueError(msg) from None
    if of_event:
        pair = keys.open_event_value(user_id, generation, sealed)
        if pair is None:
            return False, None
        metadata, salt = pair
        return True, [metadata, salt.hex() if isinstance(salt, bytes) else salt]
    plain = keys.open_cell(user_id, generation, sealed)
    if plain is None:
        return False, None
    return True, json.loads(plain)
