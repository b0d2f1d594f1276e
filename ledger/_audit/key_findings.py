"""What verification finds in the key table: rows the master key does not vouch
for, and keys destroyed without a ``forgotten`` event that retired them.

The key table is operational data, never evidence: a row planted or altered by
SQL is refused by every read (``ledger._store.key_rows``), and this check tells
the auditor where such rows are, user by user.
"""

from collections.abc import Iterable, Mapping
from uuid import UUID

from ledger._audit.chain import ChainBreak
from ledger._store.keys import KeyRow, KeyStore


def key_faults(
    keys: KeyStore,
    retired: Mapping[UUID, tuple[int, int]],
    streams: Iterable[UUID] | None = None,
) -> dict[UUID, ChainBreak]:
    """The first key-table finding of each stream (of ``streams`` if given).

    ``retired`` gives, per stream read in the log, the version of its last event
    and the key generations its ``forgotten`` events retired (those below the
    number; 0 for none).
    """
    found: dict[UUID, ChainBreak] = {}
    for row in keys.key_rows(streams):
        if row.stream in found:
            continue
        version, below = retired.get(row.stream, (0, 0))
        problem = _problem(row, below)
        if problem is not None:
            found[row.stream] = ChainBreak(
                version=version, fault="key-rows", detail=problem
            )
    return found


def _problem(row: KeyRow, retired_below: int) -> str | None:
    if row.authentic is False:
        return (
            f"the key row of generation {row.generation} is not authenticated by "
            "the master key: it was planted or altered by SQL, and is not used; "
            "restore it from a backup"
        )
    if row.destroyed and row.generation >= retired_below:
        return (
            f"the key of generation {row.generation} was destroyed, but no "
            "forgotten event retired it: its values read as erased without a "
            "recorded erasure (the key table was edited, or the user's events "
            "did not replay when forget_user ran)"
        )
    return None
