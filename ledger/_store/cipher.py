"""AES-GCM as the ledger uses it: the master key that seals the data keys, and
sealing a value for the place where it is stored.

Sealed values carry their own random 96-bit nonce, and the associated data binds
each one to its stream and key generation (and a snapshot's to its version).
"""

import base64
import binascii
import os
from uuid import UUID

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ledger.errors import LedgerConfigError

KEY_BYTES = 32
NONCE_BYTES = 12
MASTER_KEY_VARIABLE = "CTXLEDGER_MASTER_KEY"
_WRAP_LABEL = b"ctxledger data key\n"


class MasterKey:
    """The key that seals the data keys and authenticates the key table's rows:
    32 bytes, given as bytes, 64 hex digits or URL-safe base64
    (``CTXLEDGER_MASTER_KEY``)."""

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
        """``key`` sealed for ``label``: nonce + ciphertext + tag. An empty
        ``key`` gives an authenticator of ``label`` alone."""
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, key, _WRAP_LABEL + label)

    def opens(self, label: bytes, wrapped: bytes) -> bytes | None:
        """What ``wrap`` sealed for ``label``; None if it was not this master
        key's for this label (altered, moved, or planted)."""
        try:
            return self._aead.decrypt(
                wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], _WRAP_LABEL + label
            )
        except (InvalidTag, ValueError):  # ValueError: a row too short for a nonce
            return None

    def unwrap(self, label: bytes, wrapped: bytes) -> bytes:
        """What ``wrap`` sealed; LedgerConfigError if it does not open."""
        opened = self.opens(label, wrapped)
        if opened is None:
            raise LedgerConfigError(
                "the master key given does not open this ledger's data keys: give "
                "the master key they were wrapped with (master_key= or "
                "CTXLEDGER_MASTER_KEY)"
            )
        return opened


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
