"""Where the data keys are stored: the storage interface of the key table, and
its memory:// form (the SQL form is in key_sql.py). The rules for which row is
trusted are in key_rows.py; the keys' lifecycle in keys.py.

Table ``ctxledger_keys``: ``stream_id`` (hex), ``generation``, ``data_key``,
``wrapped`` (the row is sealed by the master key), ``destroyed`` (a tombstone).
The meta row (stream '', generation -1) holds the master key's check value.
"""

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from ledger.errors import LedgerConfigError

Found = tuple[bytes, bool, bool]
"""A key row: the stored bytes, whether they are sealed by the master key,
whether the row is a tombstone."""
Vouch = Callable[[str, int, bytes, bool], bytes | None]
"""The master key's form of a row in plain form (None: not a key, left as is)."""
Tombstones = list[tuple[int, bytes, bool]]
"""Generation, stored bytes and whether they are sealed, per tombstone."""
META_STREAM = ""
META_GENERATION = -1
META = (META_STREAM, META_GENERATION)


class MigrationLost(Exception):
    """Another process changed the meta row first: check again what it stored."""


def downgraded() -> LedgerConfigError:
    """The meta row says no master key, yet rows are sealed by one."""
    return LedgerConfigError(
        "this ledger's key table holds keys sealed by a master key, but its meta "
        "row (stream '', generation -1) is missing or says no master key was "
        "adopted: it was removed or replaced by SQL. Restore that row from a "
        "backup of the key table; until then the ledger does not adopt a master "
        "key (adopting would vouch for rows planted since)"
    )


class KeyTable:
    """The rows of the key table, as each backend stores them."""

    def create(self) -> None:
        raise NotImplementedError

    def select(self, stream: str, generation: int, cursor: Any = None) -> Found | None:
        raise NotImplementedError

    def select_streams(
        self, streams: list[str], cursor: Any = None
    ) -> dict[tuple[str, int], Found]:
        """Every row of these streams."""
        raise NotImplementedError

    def page(self, after: tuple[str, int], limit: int) -> list[tuple[str, int, Found]]:
        """Up to ``limit`` rows after ``after`` in (stream, generation) order,
        without the meta row."""
        raise NotImplementedError

    def insert(self, stream: str, generation: int, key: bytes, wrapped: bool) -> bool:
        """Stores the key unless the stream's generation has a row already (or,
        for a key in plain form, a master key was adopted); whether it did."""
        raise NotImplementedError

    def replace(self, stream: str, generation: int, old: bytes, new: bytes) -> bool:
        """Puts the sealed key ``new`` in place of the row holding ``old``;
        whether that row was still there."""
        raise NotImplementedError

    def migrate(self, old: bytes, new: bytes, vouch: Vouch, *, adopting: bool) -> None:
        """In one transaction: the meta row from ``old`` to ``new`` (else
        MigrationLost), and every row in plain form sealed by ``vouch``;
        ``adopting``: refuses (``downgraded``) if a row is sealed already."""
        raise NotImplementedError

    def any_wrapped(self) -> bool:
        """Whether any row but the meta row is sealed by a master key."""
        raise NotImplementedError

    def live(self, stream: str, below: int) -> list[int]:
        """The stream's generations before ``below`` whose keys exist."""
        raise NotImplementedError

    def destroy_on(self, cursor: Any, stream: str, tombstones: Tombstones) -> None:
        """Replaces the rows of the tombstones' generations by the tombstones,
        on the caller's transaction."""
        raise NotImplementedError

    def own_transaction(self) -> AbstractContextManager[Any]:
        """A transaction (its cursor) for ``destroy_on`` run alone."""
        return nullcontext()

    def checkpoint(self) -> None:
        """After keys were destroyed and committed: makes the database files drop
        their bytes. Nothing to do but on SQLite."""


class MemoryKeyTable(KeyTable):
    """memory://: the keys live as long as the process."""

    def __init__(self) -> None:
        self._keys: dict[tuple[str, int], Found] = {}

    def create(self) -> None:
        """Nothing to create."""

    def select(self, stream: str, generation: int, cursor: Any = None) -> Found | None:
        return self._keys.get((stream, generation))

    def select_streams(
        self, streams: list[str], cursor: Any = None
    ) -> dict[tuple[str, int], Found]:
        wanted = set(streams)
        return {k: v for k, v in self._keys.items() if k[0] in wanted}

    def page(self, after: tuple[str, int], limit: int) -> list[tuple[str, int, Found]]:
        rows = sorted((k, v) for k, v in self._keys.items() if k > after and k != META)
        return [(s, g, found) for (s, g), found in rows[:limit]]

    def insert(self, stream: str, generation: int, key: bytes, wrapped: bool) -> bool:
        if (stream, generation) in self._keys:
            return False
        self._keys[stream, generation] = (key, wrapped, False)
        return True

    def replace(self, stream: str, generation: int, old: bytes, new: bytes) -> bool:
        row = self._keys.get((stream, generation))
        if row is None or row[0] != old:
            return False
        self._keys[stream, generation] = (new, True, False)
        return True

    def migrate(self, old: bytes, new: bytes, vouch: Vouch, *, adopting: bool) -> None:
        meta = self._keys.get(META)
        if meta is None or meta[0] != old:
            raise MigrationLost
        if adopting and self.any_wrapped():
            raise downgraded()
        for (stream, generation), (stored, wrapped, destroyed) in list(
            self._keys.items()
        ):
            if wrapped or (stream, generation) == META:
                continue
            vouched = vouch(stream, generation, stored, destroyed)
            if vouched is not None:
                self._keys[stream, generation] = (vouched, True, destroyed)
        self._keys[META] = (new, True, False)

    def any_wrapped(self) -> bool:
        return any(row[1] for key, row in self._keys.items() if key != META)

    def live(self, stream: str, below: int) -> list[int]:
        return sorted(
            g
            for (s, g), (_, _, destroyed) in self._keys.items()
            if s == stream and 0 <= g < below and not destroyed
        )

    def destroy_on(self, cursor: Any, stream: str, tombstones: Tombstones) -> None:
        for generation, stored, wrapped in tombstones:
            self._keys[stream, generation] = (stored, wrapped, True)
