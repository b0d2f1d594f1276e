"""Which rows of the key table are trusted: each row is bound to its stream and
generation and, with a master key, authenticated by it; the table's version
(the meta row) says since when, and its migration.

With a master key a live row holds its key sealed with the label stream +
generation, and a tombstone the master key's tag over that label and
``destroyed`` (AES-GCM over an empty plaintext). Once the meta row says so
(version 2), a row in plain form, or one whose seal or tag does not open, is
refused and reported (the user's reads raise LedgerCorrupted), never used.

Migration: before version 2 (keys stored before a master key was adopted, and
tombstones without a tag), the old rules apply: a row in plain form is used as
it is. Opening with ``create=True`` and the master key migrates once, in one
transaction: every live key in plain form is sealed, every tombstone gets its
tag, and the meta row moves to version 2. The migration vouches for the rows
present at that moment: they are taken as genuine, so a row planted before it
is authenticated with the rest. Adopting a master key for the first time is the
same migration.
"""

import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ledger._store.cipher import KEY_BYTES, MasterKey
from ledger._store.key_table import (
    META_GENERATION,
    META_STREAM,
    Found,
    KeyTable,
    MigrationLost,
    Tombstones,
    downgraded,
)
from ledger.errors import LedgerConfigError

RECHECK_SECONDS = 5.0
PAGE_ROWS = 2000
_CHECK = b"ctxledger master key check"  # version 1: rows not authenticated
_CHECK_AUTHENTICATED = b"ctxledger master key check\nkey rows authenticated"
WRAPPED = (
    "this ledger's data keys are wrapped by a master key: open it with "
    "master_key= or set CTXLEDGER_MASTER_KEY"
)
MISSING = object()
"""What a lookup finds for a generation that has no row at all."""
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class KeyRow:
    """One row of the key table, as verification sees it: ``authentic`` is
    None where nothing can be authenticated (no master key, or a row in plain
    form on a ledger not migrated yet), else whether the master key vouches for
    the row as this stream's key (or tombstone) of this generation."""

    stream: UUID
    generation: int
    destroyed: bool
    authentic: bool | None


class Refused:
    """A row the master key does not vouch for: never used to open or seal."""

    __slots__ = ("message", "stored")

    def __init__(self, stored: bytes, message: str) -> None:
        self.stored, self.message = stored, message


def label(stream: UUID, generation: int) -> bytes:
    return stream.bytes + generation.to_bytes(8, "big", signed=True)


def _tombstone_label(stream: UUID, generation: int) -> bytes:
    return b"destroyed\n" + label(stream, generation)


class KeyRules:
    """The key table's rows as the master key (if any) vouches for them."""

    def __init__(self, table: KeyTable, master_key: MasterKey | None) -> None:
        self.table = table
        self.master_key = master_key
        self._authenticated = False
        self._recheck_at = 0.0

    def check_master_key(self, *, create: bool) -> None:
        """Refuses a master key that does not match the ledger's keys, and a
        missing one where they are wrapped (LedgerConfigError); records the
        ledger's first master key and migrates the table (``create``)."""
        meta = self.table.select(META_STREAM, META_GENERATION)
        if meta is None:
            if not create:
                return
            if self.table.any_wrapped():
                raise downgraded()
            self.table.insert(META_STREAM, META_GENERATION, b"", False)
            meta = self.table.select(META_STREAM, META_GENERATION)
            if meta is None:
                return
        stored, wrapped, _ = meta
        if not wrapped:
            if self.master_key is None:
                return
            if not create:
                raise LedgerConfigError(
                    "this ledger's data keys are not wrapped by a master key yet: "
                    "open it once with create=True and the master key to start "
                    "wrapping them, or open it without one"
                )
            self._upgrade(stored, adopting=True)
            return
        if self.master_key is None:
            raise LedgerConfigError(WRAPPED)
        authenticated = self._check_version(stored)
        if create and not authenticated:
            self._upgrade(stored, adopting=False)
            return
        self._authenticated = authenticated
        self._recheck_at = time.monotonic() + RECHECK_SECONDS

    def _check_version(self, stored: bytes) -> bool:
        """Whether the check value says the rows are authenticated (version 2)."""
        assert self.master_key is not None  # noqa: S101  (callers check)
        check = self.master_key.unwrap(b"check", stored)
        if check not in (_CHECK, _CHECK_AUTHENTICATED):
            raise LedgerConfigError("the master key check does not match")
        return check == _CHECK_AUTHENTICATED

    def _upgrade(self, old: bytes, *, adopting: bool) -> None:
        assert self.master_key is not None  # noqa: S101  (callers check)
        new = self.master_key.wrap(b"check", _CHECK_AUTHENTICATED)
        try:
            self.table.migrate(old, new, self._vouch, adopting=adopting)
        except MigrationLost:
            pass  # another process's change came first: check what it stored
        else:
            _log.info("the key table is now authenticated by the master key")
        self.check_master_key(create=True)

    def _vouch(
        self, hexed: str, generation: int, stored: bytes, destroyed: bool
    ) -> bytes | None:
        """The master key's form of a row in plain form that the migration
        takes as genuine."""
        assert self.master_key is not None  # noqa: S101  (callers check)
        try:
            stream = UUID(hex=hexed)
        except ValueError:
            return None  # no user's row: key_rows leaves it out
        if destroyed:
            return self.master_key.wrap(_tombstone_label(stream, generation), b"")
        if len(stored) != KEY_BYTES:
            return None  # not a key: refused when read
        return self.master_key.wrap(label(stream, generation), stored)

    def authenticated(self) -> bool:
        """Whether the rows of this ledger are authenticated by a master key
        (one was given, and the table is migrated)."""
        meta = self.table.select(META_STREAM, META_GENERATION)
        self._authenticated = self._says_authenticated(meta)
        return self._authenticated

    def _says_authenticated(self, meta: Found | None) -> bool:
        if self.master_key is None or meta is None or not meta[1]:
            return False
        return self.master_key.opens(b"check", meta[0]) == _CHECK_AUTHENTICATED

    def _old_rules(self, cursor: Any) -> bool:
        """Whether rows in plain form are still used as they are (the table not
        migrated); looked up again at most every RECHECK_SECONDS."""
        if self._authenticated:
            return False
        now = time.monotonic()
        if now >= self._recheck_at:
            self._recheck_at = now + RECHECK_SECONDS
            meta = self.table.select(META_STREAM, META_GENERATION, cursor)
            self._authenticated = self._says_authenticated(meta)
        return not self._authenticated

    def opened(
        self, stream: UUID, generation: int, found: Found | None, cursor: Any = None
    ) -> object:
        """What a row holds: the key (AESGCM), None for a tombstone, MISSING for
        no row, Refused for a row the master key does not vouch for."""
        if found is None:
            return MISSING
        stored, wrapped, destroyed = found
        if self.master_key is None:
            if wrapped and not destroyed:
                raise LedgerConfigError(WRAPPED)
            return None if destroyed else AESGCM(stored)
        if wrapped and destroyed:
            tag = self.master_key.opens(_tombstone_label(stream, generation), stored)
            if tag == b"":
                return None
        elif wrapped:
            key = self.master_key.opens(label(stream, generation), stored)
            if key is not None and len(key) == KEY_BYTES:
                return AESGCM(key)
        elif self._old_rules(cursor):
            return None if destroyed else AESGCM(stored)
        kind = "tag" if destroyed else "seal" if wrapped else "plain"
        return Refused(stored, _refusal(stream, generation, kind))

    def tombstones(self, stream: UUID, below: int, cursor: Any) -> Tombstones:
        """The tombstones of the generations before ``below``: tagged by the
        master key, else empty (refused where another process adopted one)."""
        if self.master_key is None:
            meta = self.table.select(META_STREAM, META_GENERATION, cursor)
            if meta is not None and meta[1]:
                raise LedgerConfigError(WRAPPED)
            return [(g, b"", False) for g in range(below)]
        master = self.master_key
        return [
            (g, master.wrap(_tombstone_label(stream, g), b""), True)
            for g in range(below)
        ]

    def key_rows(self, streams: Iterable[UUID] | None = None) -> Iterator[KeyRow]:
        """Every row (of ``streams`` if given) but the meta row, in (stream,
        generation) order, with whether the master key vouches for it."""
        authenticated = self.master_key is not None and self.authenticated()
        if streams is not None:
            ordered = sorted(set(streams))
            for start in range(0, len(ordered), 500):
                chunk = [stream.hex for stream in ordered[start : start + 500]]
                rows = sorted(self.table.select_streams(chunk).items())
                for (hexed, generation), found in rows:
                    yield from self._key_row(hexed, generation, found, authenticated)
            return
        after = (META_STREAM, -(2**63))
        while True:
            page = self.table.page(after, PAGE_ROWS)
            for hexed, generation, found in page:
                yield from self._key_row(hexed, generation, found, authenticated)
            if len(page) < PAGE_ROWS:
                return
            after = page[-1][0], page[-1][1]

    def _key_row(
        self, hexed: str, generation: int, found: Found, authenticated: bool
    ) -> Iterator[KeyRow]:
        """The row as a KeyRow (none for a stream id that is no user's)."""
        try:
            stream = UUID(hex=hexed)
        except ValueError:
            return
        if (hexed, generation) == (META_STREAM, META_GENERATION):
            return
        stored, wrapped, destroyed = found
        authentic: bool | None = None
        if self.master_key is not None and wrapped:
            if destroyed:
                tag = self.master_key.opens(
                    _tombstone_label(stream, generation), stored
                )
                authentic = tag == b""
            else:
                key = self.master_key.opens(label(stream, generation), stored)
                authentic = key is not None and len(key) == KEY_BYTES
        elif authenticated:
            authentic = False
        yield KeyRow(stream, generation, destroyed, authentic)


def _refusal(stream: UUID, generation: int, kind: str) -> str:
    """Short: a reader's error keeps 300 characters of it after the event's name."""
    what = {
        "plain": "a key in plain form",
        "tag": "a tombstone without its tag",
        "seal": "a seal that does not open",
    }[kind]
    return (
        f"key row {generation} of stream {stream} is not authenticated by the "
        f"master key ({what}): planted or altered by SQL, not used; restore the "
        "row from a backup"
    )
