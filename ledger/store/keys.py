"""Per-user data keys: personal data is sealed under them, and erased by destroying
them (crypto-shredding).

Each user's stream has one data key per *generation*: generation 0 until the user
is first forgotten, then one more after each ``forgotten`` event. A key is 32
random bytes for AES-256-GCM, kept in the ledger's own database (table
``ctxledger_keys``), wrapped by the master key when one is given, so a copy of the
database without the master key opens nothing.

Sealed values carry their own random 96-bit nonce, and the associated data binds
each one to its stream and key generation (and a snapshot's to its version). An
event's sealed metadata must also match the event's commitment, which the chain
covers, so a value moved to another event of the same user is refused too.

Keys for writing are cached for the life of the process: an event sealed under a
key that another process has since destroyed can never be stored, because the
``forgotten`` event took its version first (the append conflicts and the command
runs again on the new generation). Keys for reading are looked up per read
(``reading()`` scopes one lookup per key to one read), so a process never opens
a value with a key destroyed before its read began.
"""

import base64
import binascii
import os
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.persistence import IntegrityError

from ledger.errors import LedgerConfigError

KEY_BYTES = 32
NONCE_BYTES = 12
KEYS_TABLE = "ctxledger_keys"
WRITE_CACHE_SIZE = 65536
_WRAP_LABEL = b"ctxledger data key\n"


class MasterKey:
    """The key that wraps the data keys: 32 bytes, given as bytes, 64 hex digits
    or URL-safe base64 (``CTXLEDGER_MASTER_KEY``)."""

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @classmethod
    def parse(cls, value: object, source: str) -> "MasterKey":
        key = _key_bytes(value)
        if key is None:
            raise LedgerConfigError(
                f"{source} is not a key: give 32 bytes, as bytes, as 64 hex digits "
                "or as URL-safe base64 (for example from "
                '`python -c "import secrets; print(secrets.token_hex(32))"`)'
            )
        return cls(key)

    def wrap(self, label: bytes, key: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, key, _WRAP_LABEL + label)

    def unwrap(self, label: bytes, wrapped: bytes) -> bytes:
        try:
            return self._aead.decrypt(
                wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _WRAP_LABEL + label
            )
        except (InvalidTag, ValueError):  # ValueError: a row too short for a nonce
            raise LedgerConfigError(
                "the master key given does not open this ledger's data keys: give "
                "the master key they were wrapped with (master_key= or "
                "CTXLEDGER_MASTER_KEY)"
            ) from None


MASTER_KEY_VARIABLE = "CTXLEDGER_MASTER_KEY"


def resolve_master_key(value: bytes | str | None) -> MasterKey | None:
    """The master key given, else CTXLEDGER_MASTER_KEY's, else None."""
    if value is not None:
        return MasterKey.parse(value, "master_key")
    from_environment = os.environ.get(MASTER_KEY_VARIABLE)
    if from_environment:
        return MasterKey.parse(from_environment, MASTER_KEY_VARIABLE)
    return None


def _key_bytes(value: object) -> bytes | None:
    if isinstance(value, bytes | bytearray):
        return bytes(value) if len(value) == KEY_BYTES else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if len(text) == 2 * KEY_BYTES:
        try:
            return bytes.fromhex(text)
        except ValueError:
            return None
    try:
        decoded = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
    return decoded if len(decoded) == KEY_BYTES else None


def seal(cipher: AESGCM, place: bytes, plaintext: bytes) -> bytes:
    """``plaintext`` sealed for ``place`` (associated data): nonce + ciphertext."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + cipher.encrypt(nonce, plaintext, place)


def unseal(cipher: AESGCM, place: bytes, sealed: bytes) -> bytes:
    """The plaintext of a sealed value; ValueError if it does not open (altered,
    or moved from another place)."""
    try:
        return cipher.decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], place)
    except (InvalidTag, ValueError):
        msg = "a sealed value does not open with its key (altered or moved)"
        raise ValueError(msg) from None


def place_of(kind: bytes, stream: UUID, version: int, generation: int) -> bytes:
    """The associated data that binds a sealed value to where it is stored."""
    return (
        kind
        + b"\n"
        + stream.bytes
        + version.to_bytes(8, "big", signed=True)
        + generation.to_bytes(8, "big", signed=True)
    )


def _label(stream: UUID, generation: int) -> bytes:
    return stream.bytes + generation.to_bytes(8, "big", signed=True)


class KeyDestroyed(IntegrityError):
    """A write would seal under a key generation that was destroyed: the user was
    forgotten since this process last read the stream. Like a version conflict,
    the command runs again on the stored state (which has the next generation)."""


_MISSING = object()
"""What ``_load`` finds for a generation that has no row at all."""
Found = tuple[bytes, bool, bool]
"""A key row: the stored key (wrapped or not), whether it is wrapped, whether it
was destroyed (a tombstone with no key)."""
_META_STREAM = ""
_META_GENERATION = -1
_CHECK = b"ctxledger master key check"


class KeyStore:
    """The data keys of one ledger's streams.

    A destroyed key leaves a tombstone row (its generation, no key), so a writer
    whose cached state is older than the erasure cannot create that generation's
    key again, and a reader tells an erased value (tombstone) from a damaged one
    (no row at all). A meta row records whether the keys are wrapped by a master
    key, and a check value that only the right master key opens.
    """

    def __init__(self, master_key: MasterKey | None) -> None:
        self.master_key = master_key
        self._writing: OrderedDict[tuple[UUID, int], AESGCM] = OrderedDict()
        self._lock = threading.Lock()
        self._scope = threading.local()

    # Storage: what each backend does (see SQLKeyStore and MemoryKeyStore).

    def create_table(self) -> None:
        raise NotImplementedError

    def _select(self, stream: str, generation: int, cursor: Any = None) -> Found | None:
        raise NotImplementedError

    def _select_streams(
        self, streams: list[str], cursor: Any = None
    ) -> dict[tuple[str, int], Found]:
        """Every key row of these streams."""
        raise NotImplementedError

    def _insert(self, stream: str, generation: int, key: bytes, wrapped: bool) -> bool:
        """Stores the key unless the stream's generation has a row already;
        whether it did."""
        raise NotImplementedError

    def _update_meta(self, check: bytes) -> None:
        raise NotImplementedError

    def _live(self, stream: str, below: int) -> list[int]:
        """The stream's generations before ``below`` whose keys exist."""
        raise NotImplementedError

    def _destroy(self, stream: str, below: int) -> None:
        """Deletes the keys of generations before ``below`` and leaves a tombstone
        for each of those generations."""
        raise NotImplementedError

    # The master key.

    def check_master_key(self, *, create: bool) -> None:
        """Refuses a master key that does not match the ledger's keys, and a
        missing one where they are wrapped (LedgerConfigError); records the
        ledger's first master key (``create``)."""
        meta = self._select(_META_STREAM, _META_GENERATION)
        if meta is None:
            if not create:
                return
            check = b"" if self.master_key is None else self._wrapped_check()
            self._insert(_META_STREAM, _META_GENERATION, check, bool(check))
            meta = self._select(_META_STREAM, _META_GENERATION)
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
                    "wrapping new keys, or open it without one"
                )
            self._update_meta(self._wrapped_check())  # from now on, wrapped
            meta = self._select(_META_STREAM, _META_GENERATION)
            if meta is None:
                return
            stored, wrapped, _ = meta  # another process's may have won
        if self.master_key is None:
            raise LedgerConfigError(
                "this ledger's data keys are wrapped by a master key: open it "
                "with master_key= or set CTXLEDGER_MASTER_KEY"
            )
        if self.master_key.unwrap(b"check", stored) != _CHECK:
            raise LedgerConfigError("the master key check does not match")

    def _wrapped_check(self) -> bytes:
        assert self.master_key is not None  # noqa: S101  (callers check)
        return self.master_key.wrap(b"check", _CHECK)

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
        found = _MISSING if new else self._load(stream, generation)
        if found is _MISSING:
            if self.master_key is None:
                # Another process may have given the ledger a master key since
                # this one opened: a new key must not then be stored unwrapped.
                self.check_master_key(create=False)
            key = AESGCM.generate_key(bit_length=8 * KEY_BYTES)
            stored = key
            if self.master_key is not None:
                stored = self.master_key.wrap(_label(stream, generation), key)
            inserted = self._insert(
                stream.hex, generation, stored, self.master_key is not None
            )
            # Else another writer's key won, or the generation is a tombstone.
            found = AESGCM(key) if inserted else self._load(stream, generation)
        if not isinstance(found, AESGCM):
            raise KeyDestroyed(
                f"the data key of generation {generation} of stream {stream} was "
                "destroyed: the user was forgotten since this state was read"
            )
        with self._lock:
            self._writing[stream, generation] = found
            if len(self._writing) > WRITE_CACHE_SIZE:
                self._writing.popitem(last=False)
        return found

    def for_reading(self, stream: UUID, generation: int) -> AESGCM | None:
        """The key to open the stream's values of ``generation``; None once it is
        destroyed (the values are erased). ValueError if the generation never had
        a key (the stored generation was altered, or the key table edited)."""
        scope: dict[tuple[UUID, int], object] | None = getattr(
            self._scope, "keys", None
        )
        if scope is not None and (stream, generation) in scope:
            found = scope[stream, generation]
        elif getattr(self._scope, "state", False) and (
            known := self._known_key(stream, generation)
        ):
            found = known
        else:
            found = self._load(stream, generation, getattr(self._scope, "cursor", None))
            if scope is not None:
                scope[stream, generation] = found
            if isinstance(found, AESGCM) and getattr(self._scope, "state", False):
                self._remember(stream, generation, found)
        if found is _MISSING:
            msg = (
                f"no data key of generation {generation} was ever stored for "
                f"stream {stream}: the event's key generation or the key table "
                "was altered"
            )
            raise ValueError(msg)
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
            scope.setdefault(pair, _MISSING)

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
            for (hexed, generation), row in self._select_streams(
                list(chunk), cursor
            ).items():
                stream = chunk[hexed]
                if (stream, generation) not in scope:
                    scope[stream, generation] = self._opened(stream, generation, row)

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
        return self._live(stream.hex, below)

    def destroy(self, stream: UUID, below: int) -> None:
        """Destroys the stream's keys of generations before ``below``."""
        with self._lock:
            for key in [k for k in self._writing if k[0] == stream and k[1] < below]:
                del self._writing[key]
        scope = getattr(self._scope, "keys", None)
        if scope is not None:
            scope.clear()
        self._destroy(stream.hex, below)

    def _load(self, stream: UUID, generation: int, cursor: Any = None) -> object:
        """The key (AESGCM), None for a destroyed one, or _MISSING."""
        return self._opened(
            stream, generation, self._select(stream.hex, generation, cursor)
        )

    def _opened(self, stream: UUID, generation: int, found: Found | None) -> object:
        if found is None:
            return _MISSING
        stored, wrapped, destroyed = found
        if destroyed:
            return None
        if wrapped:
            if self.master_key is None:
                raise LedgerConfigError(
                    "this ledger's data keys are wrapped by a master key: open it "
                    "with master_key= or set CTXLEDGER_MASTER_KEY"
                )
            stored = self.master_key.unwrap(_label(stream, generation), stored)
        return AESGCM(stored)


class MemoryKeyStore(KeyStore):
    """memory://: the keys live as long as the process."""

    def __init__(self, master_key: MasterKey | None) -> None:
        super().__init__(master_key)
        self._keys: dict[tuple[str, int], Found] = {}

    def create_table(self) -> None:
        """Nothing to create."""

    def _select(self, stream: str, generation: int, cursor: Any = None) -> Found | None:
        return self._keys.get((stream, generation))

    def _select_streams(
        self, streams: list[str], cursor: Any = None
    ) -> dict[tuple[str, int], Found]:
        wanted = set(streams)
        return {k: v for k, v in self._keys.items() if k[0] in wanted}

    def _insert(self, stream: str, generation: int, key: bytes, wrapped: bool) -> bool:
        if (stream, generation) in self._keys:
            return False
        self._keys[stream, generation] = (key, wrapped, False)
        return True

    def _update_meta(self, check: bytes) -> None:
        if not self._keys[_META_STREAM, _META_GENERATION][1]:
            self._keys[_META_STREAM, _META_GENERATION] = (check, True, False)

    def _live(self, stream: str, below: int) -> list[int]:
        return sorted(
            g
            for (s, g), (_, _, destroyed) in self._keys.items()
            if s == stream and 0 <= g < below and not destroyed
        )

    def _destroy(self, stream: str, below: int) -> None:
        for generation in range(below):
            self._keys[stream, generation] = (b"", False, True)


def _is_missing_table(error: BaseException) -> bool:
    """Whether a database error (as the driver or the library raised it) says
    that the keys table does not exist: a store set up before keys existed."""
    text = str(error)
    return "no such table" in text or (
        "ctxledger_keys" in text and "does not exist" in text
    )


class SQLKeyStore(KeyStore):
    """Keys in a table of the ledger's database (SQLite or PostgreSQL)."""

    def __init__(
        self,
        datastore: Any,
        table: str,
        *,
        sqlite_path: str | None,
        master_key: MasterKey | None,
    ) -> None:
        super().__init__(master_key)
        self.datastore = datastore
        self.table = table
        self.sqlite_path = sqlite_path
        self.postgres = sqlite_path is None

    def _sql(self, text: str) -> str:
        return text.replace("?", "%s") if self.postgres else text

    def create_table(self) -> None:
        blob = "BYTEA" if self.postgres else "BLOB"
        with self.datastore.transaction(commit=True) as cursor:
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} ("
                "stream_id TEXT NOT NULL, generation BIGINT NOT NULL, "
                f"data_key {blob} NOT NULL, wrapped INTEGER NOT NULL, "
                "destroyed INTEGER NOT NULL DEFAULT 0, "
                "PRIMARY KEY (stream_id, generation))"
            )

    def _select(self, stream: str, generation: int, cursor: Any = None) -> Found | None:
        query = self._sql(
            f"SELECT data_key, wrapped, destroyed FROM {self.table} "  # noqa: S608  (our table name)
            "WHERE stream_id = ? AND generation = ?"
        )
        rows = self._rows(query, (stream, generation), cursor)
        if not rows:
            return None
        values = rows[0]
        return bytes(values[0]), bool(values[1]), bool(values[2])

    def _select_streams(
        self, streams: list[str], cursor: Any = None
    ) -> dict[tuple[str, int], Found]:
        marks = ", ".join("?" * len(streams))
        query = self._sql(
            "SELECT stream_id, generation, data_key, wrapped, destroyed FROM "  # noqa: S608  (our table name)
            f"{self.table} WHERE stream_id IN ({marks})"
        )
        return {
            (row[0], int(row[1])): (bytes(row[2]), bool(row[3]), bool(row[4]))
            for row in self._rows(query, tuple(streams), cursor)
        }

    def _rows(
        self, query: str, params: tuple[Any, ...], cursor: Any
    ) -> list[tuple[Any, ...]]:
        """The rows a query selects, on ``cursor`` if given (inside the caller's
        transaction), else in a transaction of its own."""
        try:
            if cursor is not None:
                cursor.execute(query, params)
                rows = cursor.fetchall()
            else:
                with self.datastore.transaction(commit=False) as own:
                    own.execute(query, params)
                    rows = own.fetchall()
        except Exception as error:
            if _is_missing_table(error):
                return []  # a store set up before keys existed: nothing sealed
            raise
        return [tuple(r.values()) if isinstance(r, dict) else tuple(r) for r in rows]

    def _insert(self, stream: str, generation: int, key: bytes, wrapped: bool) -> bool:
        query = self._sql(
            f"INSERT INTO {self.table} (stream_id, generation, data_key, wrapped) "  # noqa: S608  (our table name)
            "VALUES (?, ?, ?, ?) ON CONFLICT (stream_id, generation) DO NOTHING "
            "RETURNING generation"
        )
        try:
            with self.datastore.transaction(commit=True) as cursor:
                cursor.execute(query, (stream, generation, key, int(wrapped)))
                return cursor.fetchone() is not None
        except Exception as error:
            if _is_missing_table(error):
                raise LedgerConfigError(
                    "this ledger was set up by a release without data keys: open "
                    "it once with create=True (any command that writes, such as "
                    "ctxledger project) to add their table"
                ) from None
            raise

    def _update_meta(self, check: bytes) -> None:
        query = self._sql(
            f"UPDATE {self.table} SET data_key = ?, wrapped = 1 "  # noqa: S608  (our table name)
            "WHERE stream_id = ? AND generation = ? AND wrapped = 0"
        )
        with self.datastore.transaction(commit=True) as cursor:
            cursor.execute(query, (check, _META_STREAM, _META_GENERATION))

    def _live(self, stream: str, below: int) -> list[int]:
        query = self._sql(
            f"SELECT generation FROM {self.table} WHERE stream_id = ? "  # noqa: S608  (our table name)
            "AND generation >= 0 AND generation < ? AND destroyed = 0 "
            "ORDER BY generation"
        )
        return [int(row[0]) for row in self._rows(query, (stream, below), None)]

    def _destroy(self, stream: str, below: int) -> None:
        delete = self._sql(
            f"DELETE FROM {self.table} WHERE stream_id = ? AND generation >= 0 "  # noqa: S608  (our table name)
            "AND generation < ? AND destroyed = 0"
        )
        tombstone = self._sql(
            f"INSERT INTO {self.table} "  # noqa: S608  (our table name)
            "(stream_id, generation, data_key, wrapped, destroyed) "
            "VALUES (?, ?, ?, 0, 1) ON CONFLICT (stream_id, generation) DO NOTHING"
        )
        try:
            with self.datastore.transaction(commit=True) as cursor:
                if not self.postgres:
                    # Overwrite the deleted keys' bytes instead of leaving them in
                    # a free page of the file.
                    cursor.execute("PRAGMA secure_delete = ON")
                cursor.execute(delete, (stream, below))
                for generation in range(below):
                    cursor.execute(tombstone, (stream, generation, b""))
        except Exception as error:
            if _is_missing_table(error):
                return  # a store set up before keys existed: nothing to destroy
            raise
        if not self.postgres:
            self._checkpoint()

    def _checkpoint(self) -> None:
        """Copies the WAL into the database file and truncates it, so the pages
        that held the key before its deletion do not stay in the WAL file. A busy
        reader may keep the WAL; its pages are overwritten as it is reused."""
        connection = sqlite3.connect(self.sqlite_path or "", timeout=5)
        try:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.OperationalError:
            pass  # busy: the next checkpoint copies it
        finally:
            connection.close()
