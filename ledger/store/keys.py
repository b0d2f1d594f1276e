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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID

import psycopg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

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
        except InvalidTag:
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


class KeyStore:
    """The data keys of one ledger's streams."""

    def __init__(self, master_key: MasterKey | None) -> None:
        self.master_key = master_key
        self._writing: OrderedDict[tuple[UUID, int], AESGCM] = OrderedDict()
        self._lock = threading.Lock()
        self._scope = threading.local()

    # Storage: what each backend does (see SQLKeyStore and MemoryKeyStore).

    def create_table(self) -> None:
        raise NotImplementedError

    def _select(self, stream: UUID, generation: int) -> tuple[bytes, bool] | None:
        raise NotImplementedError

    def _insert(self, stream: UUID, generation: int, key: bytes, wrapped: bool) -> bool:
        """Stores the key unless the stream's generation has one already; whether
        it did."""
        raise NotImplementedError

    def _delete(self, stream: UUID, below: int) -> None:
        raise NotImplementedError

    # Keys.

    def for_writing(
        self, stream: UUID, generation: int, *, new: bool = False
    ) -> AESGCM:
        """The key to seal the stream's new values with; created on first use.
        ``new``: the stream most likely has no key yet (its first event), so the
        key is created first and looked up only if another writer's won."""
        with self._lock:
            cipher = self._writing.get((stream, generation))
            if cipher is not None:
                self._writing.move_to_end((stream, generation))
                return cipher
        cipher = None if new else self._load(stream, generation)
        if cipher is None:
            key = AESGCM.generate_key(bit_length=8 * KEY_BYTES)
            stored = key
            if self.master_key is not None:
                stored = self.master_key.wrap(_label(stream, generation), key)
            if self._insert(stream, generation, stored, self.master_key is not None):
                cipher = AESGCM(key)
            else:
                cipher = self._load(stream, generation)  # another writer's won
            if cipher is None:
                msg = f"the data key of stream {stream} was not stored"
                raise RuntimeError(msg)
        with self._lock:
            self._writing[stream, generation] = cipher
            if len(self._writing) > WRITE_CACHE_SIZE:
                self._writing.popitem(last=False)
        return cipher

    def for_reading(self, stream: UUID, generation: int) -> AESGCM | None:
        """The key to open the stream's values of ``generation``; None once it is
        destroyed (the values are erased)."""
        scope: dict[tuple[UUID, int], AESGCM | None] | None = getattr(
            self._scope, "keys", None
        )
        if scope is not None and (stream, generation) in scope:
            return scope[stream, generation]
        cipher = self._load(stream, generation)
        if scope is not None:
            scope[stream, generation] = cipher
        return cipher

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Within it, each key is looked up once by this thread (a read of many
        values of one user costs one lookup)."""
        if getattr(self._scope, "keys", None) is not None:
            yield
            return
        self._scope.keys = {}
        try:
            yield
        finally:
            self._scope.keys = None

    def destroy(self, stream: UUID, below: int) -> None:
        """Destroys the stream's keys of generations before ``below``."""
        with self._lock:
            for key in [k for k in self._writing if k[0] == stream and k[1] < below]:
                del self._writing[key]
        scope = getattr(self._scope, "keys", None)
        if scope is not None:
            scope.clear()
        self._delete(stream, below)

    def _load(self, stream: UUID, generation: int) -> AESGCM | None:
        found = self._select(stream, generation)
        if found is None:
            return None
        stored, wrapped = found
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
        self._keys: dict[tuple[UUID, int], tuple[bytes, bool]] = {}

    def create_table(self) -> None:
        """Nothing to create."""

    def _select(self, stream: UUID, generation: int) -> tuple[bytes, bool] | None:
        return self._keys.get((stream, generation))

    def _insert(self, stream: UUID, generation: int, key: bytes, wrapped: bool) -> bool:
        if (stream, generation) in self._keys:
            return False
        self._keys[stream, generation] = (key, wrapped)
        return True

    def _delete(self, stream: UUID, below: int) -> None:
        doomed = [k for k in self._keys if k[0] == stream and k[1] < below]
        for key in doomed:
            del self._keys[key]


MISSING_TABLE = (sqlite3.OperationalError, psycopg.errors.UndefinedTable)


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
                "PRIMARY KEY (stream_id, generation))"
            )

    def _select(self, stream: UUID, generation: int) -> tuple[bytes, bool] | None:
        query = self._sql(
            f"SELECT data_key, wrapped FROM {self.table} "  # noqa: S608  (our table name)
            "WHERE stream_id = ? AND generation = ?"
        )
        try:
            with self.datastore.transaction(commit=False) as cursor:
                cursor.execute(query, (stream.hex, generation))
                row = cursor.fetchone()
        except MISSING_TABLE as error:
            if "no such table" in str(error) or self.postgres:
                return None  # a store set up before keys existed: nothing sealed
            raise
        if row is None:
            return None
        values = tuple(row.values()) if isinstance(row, dict) else tuple(row)
        return bytes(values[0]), bool(values[1])

    def _insert(self, stream: UUID, generation: int, key: bytes, wrapped: bool) -> bool:
        query = self._sql(
            f"INSERT INTO {self.table} (stream_id, generation, data_key, wrapped) "  # noqa: S608  (our table name)
            "VALUES (?, ?, ?, ?) ON CONFLICT (stream_id, generation) DO NOTHING "
            "RETURNING generation"
        )
        with self.datastore.transaction(commit=True) as cursor:
            cursor.execute(query, (stream.hex, generation, key, int(wrapped)))
            return cursor.fetchone() is not None

    def _delete(self, stream: UUID, below: int) -> None:
        query = self._sql(
            f"DELETE FROM {self.table} WHERE stream_id = ? AND generation < ?"  # noqa: S608  (our table name)
        )
        try:
            with self.datastore.transaction(commit=True) as cursor:
                if not self.postgres:
                    # Overwrite the deleted key's bytes instead of leaving them in
                    # a free page of the file.
                    cursor.execute("PRAGMA secure_delete = ON")
                cursor.execute(query, (stream.hex, below))
        except MISSING_TABLE as error:
            if self.postgres or "no such table" in str(error):
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
