"""Per-user data keys: personal data is sealed under them, and erased by destroying
them (crypto-shredding).

Each user's stream has one data key per *generation*: generation 0 until the user
is first forgotten, then one more after each ``forgotten`` event. A key is 32
random bytes for AES-256-GCM, kept in the ledger's own database (table
``ctxledger_keys``, see key_table.py), sealed by the master key when one is
given, so a copy of the database without the master key opens nothing.

An event's sealed metadata must also match the event's commitment, which the chain
covers, so a value moved to another event of the same user is refused too.

Keys for writing are cached for the life of the process: an event sealed under a
key that another process has since destroyed can never be stored, because the
``forgotten`` event took its version first (the append conflicts and the command
runs again on the new generation). Keys for reading are looked up per read
(``reading()`` scopes one lookup per key to one read), so a process never opens
a value with a key destroyed before its read began.
"""

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.persistence import IntegrityError

from ledger._store.cipher import (
    KEY_BYTES,
    MASTER_KEY_VARIABLE,
    NONCE_BYTES,
    MasterKey,
    place_of,
    resolve_master_key,
    seal,
    unseal,
)
from ledger._store.key_rows import MISSING, KeyRow, KeyRules, Refused, label
from ledger._store.key_sql import SQLKeyTable
from ledger._store.key_table import KeyTable, MemoryKeyTable

__all__ = [
    "KEYS_TABLE",
    "KEY_BYTES",
    "MASTER_KEY_VARIABLE",
    "NONCE_BYTES",
    "KeyDestroyed",
    "KeyRow",
    "KeyRowRefused",
    "KeyStore",
    "MasterKey",
    "MemoryKeyStore",
    "SQLKeyStore",
    "place_of",
    "resolve_master_key",
    "seal",
    "unseal",
]

KEYS_TABLE = "ctxledger_keys"
WRITE_CACHE_SIZE = 65536
_log = logging.getLogger(__name__)


class KeyDestroyed(IntegrityError):
    """A write would seal under a key generation that was destroyed: the user was
    forgotten since this process last read the stream. Like a version conflict,
    the command runs again on the stored state (which has the next generation)."""


class KeyRowRefused(KeyDestroyed):
    """A write would seal under a key row that the master key does not
    authenticate while stored values of that generation exist, so the row is
    neither used nor replaced (the user's reads say why)."""


class KeyStore:
    """The data keys of one ledger's streams, and their lifecycle.

    A destroyed key leaves a tombstone row (its generation, no key), so a writer
    whose cached state is older than the erasure cannot create that generation's
    key again, and a reader tells an erased value (tombstone) from a damaged one
    (no row at all). Which rows are trusted, and the table's migration when a
    master key is adopted, is ``KeyRules``'s (key_rows.py): with a master key a
    row planted or altered by SQL is refused and reported, never used, and a
    refused row that no stored value uses is replaced by a new key when the user
    next writes. The migration vouches for the rows present when it runs.
    """

    sealed_under: Callable[[UUID, int], bool] | None = None
    """Whether any stored value of the stream is sealed under the generation, for
    a write that meets a refused row; set by the application. Without it the
    row is replaced: a write comes after loading the user's state, and a load
    that needed the row would have refused it, so nothing the state was built
    from is sealed under it."""

    def __init__(self, table: KeyTable, master_key: MasterKey | None) -> None:
        self.table = table
        self.master_key = master_key
        self.rules = KeyRules(table, master_key)
        self._writing: OrderedDict[tuple[UUID, int], AESGCM] = OrderedDict()
        self._lock = threading.Lock()
        self._scope = threading.local()

    def create_table(self) -> None:
        self.table.create()

    def check_master_key(self, *, create: bool) -> None:
        """Refuses a master key that does not match the ledger's keys, and a
        missing one where they are wrapped (LedgerConfigError); records the
        ledger's first master key and migrates the table (``create``)."""
        self.rules.check_master_key(create=create)

    def authenticated(self) -> bool:
        """Whether the rows of this ledger are authenticated by a master key."""
        return self.rules.authenticated()

    def key_rows(self, streams: Iterable[UUID] | None = None) -> Iterator[KeyRow]:
        """Every key row (of ``streams`` if given) but the meta row, in (stream,
        generation) order, with whether the master key vouches for it."""
        return self.rules.key_rows(streams)

    def checkpoint(self) -> None:
        """After keys were destroyed and committed (``destroy_on``): makes
        SQLite's files drop their bytes (a WAL checkpoint)."""
        self.table.checkpoint()

    # Keys.

    def for_writing(
        self, stream: UUID, generation: int, *, new: bool = False
    ) -> AESGCM:
        """The key to seal the stream's new values with; created on first use.
        ``new``: the stream most likely has no key yet (its first event), so the
        key is created first and looked up only if another writer's won.
        KeyDestroyed if the generation was destroyed."""
        with self._lock:
            cipher = self._writing.get((stream, generation))
            if cipher is not None:
                self._writing.move_to_end((stream, generation))
                return cipher
        found = MISSING if new else self._load(stream, generation)
        for _ in range(3):  # a row planted or replaced between two steps
            if isinstance(found, Refused):
                found = self._replaced(stream, generation, found)
            if found is not MISSING:
                break
            found = self._created(stream, generation)
        if isinstance(found, Refused):
            raise KeyRowRefused(found.message)
        if not isinstance(found, AESGCM):
            raise KeyDestroyed(
                f"the data key of generation {generation} of stream {stream} was "
                "destroyed: the user was forgotten since this state was read"
            )
        self._remember(stream, generation, found)
        return found

    def _created(self, stream: UUID, generation: int) -> object:
        """A new key stored for the generation, else what its row holds."""
        if self.master_key is None:
            # Another process may have given the ledger a master key since
            # this one opened: a new key must not then be stored unwrapped.
            self.rules.check_master_key(create=False)
        key = AESGCM.generate_key(bit_length=8 * KEY_BYTES)
        stored = key
        if self.master_key is not None:
            stored = self.master_key.wrap(label(stream, generation), key)
        if self.table.insert(
            stream.hex, generation, stored, self.master_key is not None
        ):
            return AESGCM(key)
        if self.master_key is None:
            self.rules.check_master_key(create=False)  # refused: wrapped since
        # Another writer's key won, the generation is a tombstone, or a row
        # was planted.
        return self._load(stream, generation)

    def _replaced(self, stream: UUID, generation: int, refused: Refused) -> object:
        """A new key in place of a refused row that no stored value uses (a row
        planted for a user or generation that has not written yet must not block
        it); KeyRowRefused if values of the generation are stored."""
        probe = self.sealed_under
        unused = probe is None or not probe(stream, generation)
        if not unused or self.master_key is None:
            raise KeyRowRefused(
                f"{refused.message}; values of that generation are stored, so "
                "the row is not replaced"
            )
        key = AESGCM.generate_key(bit_length=8 * KEY_BYTES)
        stored = self.master_key.wrap(label(stream, generation), key)
        if not self.table.replace(stream.hex, generation, refused.stored, stored):
            return self._load(stream, generation)  # changed meanwhile
        _log.warning(
            "stream %s: the key row of generation %d was not authenticated by "
            "the master key (planted or altered by SQL) and no stored value used "
            "it: it is replaced by a new key",
            stream,
            generation,
        )
        return AESGCM(key)

    def for_reading(self, stream: UUID, generation: int) -> AESGCM | None:
        """The key to open the stream's values of ``generation``; None once it is
        destroyed (the values are erased). ValueError if the generation never had
        a key (the stored generation was altered, or the key table edited), or
        its row is not authenticated by the master key."""
        scope: dict[tuple[UUID, int], object] | None = getattr(
            self._scope, "keys", None
        )
        state = getattr(self._scope, "state", False)
        if scope is not None and (stream, generation) in scope:
            found = scope[stream, generation]
        elif state and (known := self._known_key(stream, generation)):
            found = known
        else:
            cursor = getattr(self._scope, "cursor", None)
            found = self._load(stream, generation, cursor)
            if scope is not None:
                scope[stream, generation] = found
            if isinstance(found, AESGCM) and state:
                self._remember(stream, generation, found)
        if found is MISSING:
            msg = (
                f"no data key of generation {generation} was ever stored for "
                f"stream {stream}: the event's key generation or the key table "
                "was altered"
            )
            raise ValueError(msg)
        if isinstance(found, Refused):
            raise ValueError(found.message)
        return found if isinstance(found, AESGCM) else None

    @contextmanager
    def reading(self, *, cursor: Any = None, state: bool = False) -> Iterator[None]:
        """Within it, each key is looked up once by this thread (a read of many
        values of one user costs one lookup).

        ``cursor``: look keys up on it (a transaction of the same database that
        is open already, so a read takes no second pooled connection).
        ``state``: the read only rebuilds the user's current state (loading the
        aggregate), which holds nothing of what an erasure destroyed (the
        ``forgotten`` event is stored before the key is destroyed, and ends the
        contexts), so keys this process already knows serve without a lookup.
        """
        if getattr(self._scope, "keys", None) is not None:
            yield
            return
        self._scope.keys, self._scope.cursor, self._scope.state = {}, cursor, state
        try:
            yield
        finally:
            self._scope.keys, self._scope.cursor, self._scope.state = None, None, False

    def prefetch(self, wanted: Iterable[tuple[UUID, int]]) -> None:
        """Looks up many keys at once into the current ``reading()`` scope (a view
        query of many users costs one statement per 500 users, not one each); a
        wanted key without a row is noted as missing."""
        scope: dict[tuple[UUID, int], object] | None = getattr(
            self._scope, "keys", None
        )
        if scope is None:
            return
        missing = {pair for pair in wanted if pair not in scope}
        self.prefetch_streams(stream for stream, _ in missing)
        for pair in missing:
            scope.setdefault(pair, MISSING)

    def prefetch_streams(self, streams: Iterable[UUID]) -> None:
        """Looks up every key of these streams at once into the current
        ``reading()`` scope (a page of the log costs one statement per 500
        users); a generation without a row is left to ``for_reading`` to find
        missing."""
        scope: dict[tuple[UUID, int], object] | None = getattr(
            self._scope, "keys", None
        )
        if scope is None:
            return
        cursor = getattr(self._scope, "cursor", None)
        ordered = sorted(set(streams))
        for start in range(0, len(ordered), 500):
            chunk = {stream.hex: stream for stream in ordered[start : start + 500]}
            for (hexed, generation), row in self.table.select_streams(
                list(chunk), cursor
            ).items():
                stream = chunk[hexed]
                if (stream, generation) not in scope:
                    scope[stream, generation] = self.rules.opened(
                        stream, generation, row, cursor
                    )

    def _known_key(self, stream: UUID, generation: int) -> AESGCM | None:
        with self._lock:
            return self._writing.get((stream, generation))

    def _remember(self, stream: UUID, generation: int, cipher: AESGCM) -> None:
        with self._lock:
            self._writing[stream, generation] = cipher
            if len(self._writing) > WRITE_CACHE_SIZE:
                self._writing.popitem(last=False)

    def live_generations(self, stream: UUID, below: int) -> list[int]:
        """The stream's generations before ``below`` whose keys still exist."""
        return self.table.live(stream.hex, below)

    def destroy(self, stream: UUID, below: int) -> None:
        """Destroys the stream's keys of generations before ``below``, in a
        transaction of its own."""
        with self.table.own_transaction() as cursor:
            self.destroy_on(cursor, stream, below)
        self.checkpoint()

    def destroy_on(self, cursor: Any, stream: UUID, below: int) -> None:
        """Destroys the stream's keys of generations before ``below`` on the
        caller's open transaction (no commit): each becomes a tombstone,
        authenticated by the master key if there is one. After the commit, call
        ``checkpoint()``."""
        with self._lock:
            for key in [k for k in self._writing if k[0] == stream and k[1] < below]:
                del self._writing[key]
        scope = getattr(self._scope, "keys", None)
        if scope is not None:
            scope.clear()
        if below <= 0:
            return
        tombstones = self.rules.tombstones(stream, below, cursor)
        self.table.destroy_on(cursor, stream.hex, tombstones)

    def _load(self, stream: UUID, generation: int, cursor: Any = None) -> object:
        """The key (AESGCM), None for a destroyed one, MISSING or Refused."""
        return self.rules.opened(
            stream,
            generation,
            self.table.select(stream.hex, generation, cursor),
            cursor,
        )


class MemoryKeyStore(KeyStore):
    """memory://: the keys live as long as the process."""

    def __init__(self, master_key: MasterKey | None) -> None:
        super().__init__(MemoryKeyTable(), master_key)


class SQLKeyStore(KeyStore):
    """Keys in a table of the ledger's database: ``table`` is the backend's
    (``ledger._store.sqlite``, ``ledger._store.postgres``)."""

    def __init__(self, table: SQLKeyTable, master_key: MasterKey | None) -> None:
        super().__init__(table, master_key)
