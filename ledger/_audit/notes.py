"""Signed checkpoints in the C2SP formats: Ed25519 keys as golang.org/x/mod/sumdb/note
writes them, signed notes (c2sp.org/signed-note), checkpoints
(c2sp.org/tlog-checkpoint), with no I/O; offline proofs (c2sp.org/tlog-proof) are
``ledger._audit.tlog_proof``.

Every malformed text or failed signature raises ``CheckpointError`` saying which.
"""

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from ledger.errors import CheckpointError

ED25519 = 0x01  # the signature type byte of Ed25519 in key texts and key ids
MAX_SIGNATURES = 100  # signature lines per note: the spec asks for 16 at least, Go 100
MAX_SIZE = 2**64 - 1  # the largest tree size or index: Go's readers take a uint64
SHARD_ORIGIN = "/shard/"
_SIGNATURE_PREFIX = "\u2014 "
_HASH_SIZE = 32
_KEY_ID_SIZE = 4
_CHECKPOINT_LINES = 3
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_KEY_ID = re.compile(r"[0-9a-fA-F]{8}")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")


def _b64decode(text: str, what: str) -> bytes:
    """Strict standard base64: the alphabet, padding, and the canonical encoding."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise CheckpointError(f"{what} is not standard base64") from None
    if base64.b64encode(data).decode("ascii") != text:
        raise CheckpointError(f"{what} is not canonical base64") from None
    return data


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _check_text(text: str, what: str) -> None:
    """UTF-8 with no control characters other than newline, as notes must be."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointError(f"{what} is not valid UTF-8") from None
    found = _CONTROL.search(text)
    if found:
        raise CheckpointError(
            f"{what} holds the control character {found.group()!r} at "
            f"{found.start()}: only newline may appear"
        )


def check_key_name(name: str) -> str:
    """A key name as the note spec allows it: non-empty, no spaces, no '+'."""
    if not name:
        raise CheckpointError("a key name must not be empty")
    if any(char.isspace() for char in name):
        raise CheckpointError(f"key name {name!r} holds a space; use none")
    if "+" in name:
        raise CheckpointError(f"key name {name!r} holds a '+'; use none")
    _check_text(name, f"key name {name!r}")
    return name


def key_id(name: str, public_key: bytes) -> int:
    """The Ed25519 key id: SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    digest = hashlib.sha256(
        name.encode("utf-8") + b"\n" + bytes([ED25519]) + public_key
    ).digest()
    return int.from_bytes(digest[:4], "big")


def _key_parts(text: str, what: str) -> tuple[str, int, bytes]:
    """The name, key id and Ed25519 key bytes of ``name+hex8+base64(0x01||key)``."""
    name, _, rest = text.partition("+")
    hex_id, _, key64 = rest.partition("+")
    check_key_name(name)
    if not _KEY_ID.fullmatch(hex_id):
        raise CheckpointError(f"{what} for {name!r}: the key id is not 8 hex digits")
    raw = _b64decode(key64, f"{what} for {name!r}")
    if len(raw) != 1 + _HASH_SIZE or raw[0] != ED25519:
        raise CheckpointError(
            f"{what} for {name!r} is not an Ed25519 key (type 0x01, 32 bytes)"
        )
    return name, int(hex_id, 16), raw[1:]


def _key_text(name: str, key_id: int, key: bytes) -> str:
    return f"{name}+{key_id:08x}+{_b64(bytes([ED25519]) + key)}"


def _check_key_id(name: str, claimed: int, public_key: bytes, what: str) -> None:
    actual = key_id(name, public_key)
    if claimed != actual:
        raise CheckpointError(
            f"{what} for {name!r} says key id {claimed:08x} but its key has "
            f"{actual:08x}: the key text was altered or mixed with another"
        )


class Verifier:
    """An Ed25519 verifier key of a name, read from ``name+keyid+base64``."""

    def __init__(self, name: str, public_key: bytes) -> None:
        self.name = check_key_name(name)
        self.key_id = key_id(name, public_key)
        self.public_key = public_key
        self._key = Ed25519PublicKey.from_public_bytes(public_key)

    @classmethod
    def from_text(cls, text: str) -> "Verifier":
        """Read a verifier key text; CheckpointError if malformed or inconsistent."""
        name, claimed, public_key = _key_parts(text.strip(), "verifier key")
        _check_key_id(name, claimed, public_key, "verifier key")
        return cls(name, public_key)

    def text(self) -> str:
        """The verifier key text: ``name+keyid+base64(0x01||public key)``."""
        return _key_text(self.name, self.key_id, self.public_key)

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is this key's Ed25519 signature of ``message``."""
        try:
            self._key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


class Signer:
    """An Ed25519 signer key of a name, read from
    ``PRIVATE+KEY+name+keyid+base64(0x01||seed)``; its repr hides the seed."""

    def __init__(self, name: str, seed: bytes) -> None:
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self._verifier = Verifier(name, self._key.public_key().public_bytes_raw())
        self.name = self._verifier.name
        self.key_id = self._verifier.key_id

    @classmethod
    def from_text(cls, text: str) -> "Signer":
        """Read a signer key text; CheckpointError (without the secret) if bad."""
        if not text.strip().startswith("PRIVATE+KEY+"):
            raise CheckpointError("a signer key text must start with PRIVATE+KEY+")
        rest = text.strip().removeprefix("PRIVATE+KEY+")
        name, claimed, seed = _key_parts(rest, "signer key")
        signer = cls(name, seed)
        _check_key_id(name, claimed, signer._verifier.public_key, "signer key")
        return signer

    def text(self) -> str:
        """The signer key text (secret)."""
        seed = self._key.private_bytes_raw()
        return "PRIVATE+KEY+" + _key_text(self.name, self.key_id, seed)

    def sign(self, message: bytes) -> bytes:
        """The Ed25519 signature of ``message`` (64 bytes)."""
        return self._key.sign(message)

    def verifier(self) -> Verifier:
        """The verifier of this key."""
        return self._verifier

    def verifier_text(self) -> str:
        """The verifier key text to give to those who check the signatures."""
        return self._verifier.text()

    def __repr__(self) -> str:
        return f"Signer(name={self.name!r}, key_id={self.key_id:08x})"


def generate_key(name: str) -> tuple[str, str]:
    """A new Ed25519 key for ``name``: (signer key text, verifier key text)."""
    seed = Ed25519PrivateKey.generate().private_bytes_raw()
    signer = Signer(check_key_name(name), seed)
    return signer.text(), signer.verifier_text()


def sign_note(text: str, signer: Signer) -> str:
    """The signed note of ``text`` (which ends in a newline): the text, a blank
    line and ``— name base64(keyid || signature)``."""
    if not text.endswith("\n"):
        raise CheckpointError("a note's text must end in a newline")
    _check_text(text, "the note's text")
    signature = signer.sign(text.encode("utf-8"))
    key_id = signer.key_id.to_bytes(_KEY_ID_SIZE, "big")
    return f"{text}\n{_SIGNATURE_PREFIX}{signer.name} {_b64(key_id + signature)}\n"


def split_note(note: str) -> tuple[str, list[tuple[str, str]]]:
    """The text of a note and its signature lines as (name, base64), checked for
    form but not decoded; CheckpointError if the note is malformed."""
    _check_text(note, "the note")
    split = note.rfind("\n\n")
    if split < 0:
        raise CheckpointError("the note has no blank line before its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block:
        raise CheckpointError("the note has no signature lines after its blank line")
    if not block.endswith("\n"):
        raise CheckpointError("the note's signature block must end in a newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise CheckpointError(f"the note has over {MAX_SIGNATURES} signature lines")
    return text, [_signature_line(line) for line in lines]


def _signature_line(line: str) -> tuple[str, str]:
    if not line.startswith(_SIGNATURE_PREFIX):
        raise CheckpointError(
            f"signature line {line[:40]!r} does not start with an em dash "
            "(U+2014) and a space"
        )
    name, _, signature64 = line[len(_SIGNATURE_PREFIX) :].partition(" ")
    check_key_name(name)
    if not signature64:
        raise CheckpointError(f"the signature line of {name!r} has no signature")
    return name, signature64


def open_note(note: str, verifier: Verifier) -> str:
    """The text of ``note`` if it has signatures of ``verifier`` and all hold; the
    lines of other keys are only checked for form."""
    text, lines = split_note(note)
    key = (verifier.name, verifier.key_id.to_bytes(_KEY_ID_SIZE, "big"))
    signatures = [(name, _signature_bytes(name, b64)) for name, b64 in lines]
    mine = [
        raw[_KEY_ID_SIZE:]
        for name, raw in signatures
        if (name, raw[:_KEY_ID_SIZE]) == key
    ]
    if not mine:
        raise CheckpointError(
            f"the note has no signature by key {verifier.name}+{verifier.key_id:08x}"
            f" (it is signed by: {', '.join(name for name, _ in lines)})"
        )
    if not all(verifier.verify(text.encode("utf-8"), raw) for raw in mine):
        raise CheckpointError(
            f"the signature of key {verifier.name}+{verifier.key_id:08x} does not "
            "verify: the note was altered or not signed by this key"
        )
    return text


def _signature_bytes(name: str, signature64: str) -> bytes:
    """A signature line's key id and signature, at least one byte of the latter."""
    raw = _b64decode(signature64, f"the signature of {name!r}")
    if len(raw) <= _KEY_ID_SIZE:
        raise CheckpointError(f"the signature of {name!r} is too short")
    return raw


def _decimal(text: str, what: str) -> int:
    """A decimal of at most ``MAX_SIZE`` with no sign and no leading zero."""
    if not _DECIMAL.fullmatch(text) or len(text) > len(str(MAX_SIZE)):
        raise CheckpointError(
            f"{what} {text[:30]!r} is not a decimal without sign or leading zeros"
        )
    value = int(text)
    if value > MAX_SIZE:
        raise CheckpointError(f"{what} {value} is over {MAX_SIZE}")
    return value


def _check_line(line: object, what: str) -> None:
    if not isinstance(line, str) or not line or "\n" in line:
        raise CheckpointError(f"{what} must be one non-empty line, not {line!r:.60}")
    _check_text(line, what)


@dataclass(frozen=True)
class Checkpoint:
    """The head of a log (c2sp.org/tlog-checkpoint): its origin, size and root."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "a checkpoint's origin")
        if type(self.size) is not int or not 0 <= self.size <= MAX_SIZE:
            raise CheckpointError(
                f"a checkpoint's size is not 0 to 2**64-1: {self.size!r}"
            )
        if not isinstance(self.root, bytes) or len(self.root) != _HASH_SIZE:
            raise CheckpointError("a checkpoint's root must be 32 bytes")
        for line in self.extensions:
            _check_line(line, "a checkpoint's extension line")

    def text(self) -> str:
        """The checkpoint's note text: origin, size, base64 root, extension lines."""
        lines = [self.origin, str(self.size), _b64(self.root), *self.extensions]
        return "".join(f"{line}\n" for line in lines)

    @classmethod
    def parse(cls, text: str) -> "Checkpoint":
        """Read a checkpoint's note text; CheckpointError on anything malformed."""
        if not text.endswith("\n"):
            raise CheckpointError("a checkpoint's text must end in a newline")
        lines = text[:-1].split("\n")
        if len(lines) < _CHECKPOINT_LINES:
            raise CheckpointError(
                "a checkpoint has at least 3 lines (origin, size, root), not "
                f"{len(lines)}"
            )
        origin, size, root64, *extensions = lines
        root = _b64decode(root64, "the checkpoint's root")
        return cls(origin, _decimal(size, "the tree size"), root, tuple(extensions))


def sign_checkpoint(checkpoint: Checkpoint, signer: Signer) -> str:
    """The signed note of ``checkpoint``, whose origin must be the key's log."""
    _speaks_for(checkpoint.origin, signer.name)
    return sign_note(checkpoint.text(), signer)


def open_checkpoint(note: str, verifier: Verifier) -> Checkpoint:
    """The checkpoint of a signed note that ``verifier`` signed for its own log."""
    checkpoint = Checkpoint.parse(open_note(note, verifier))
    _speaks_for(checkpoint.origin, verifier.name)
    return checkpoint


def _speaks_for(origin: str, name: str) -> None:
    """A key speaks for its own log and for its shards' (``name/shard/N``)."""
    shard_of_origin(origin, name)


def shard_of_origin(origin: str, name: str) -> int:
    """The shard whose log ``origin`` names under the key ``name``: 0 for the
    key's own log, N for ``name/shard/N``; CheckpointError for any other."""
    number = origin.removeprefix(f"{name}{SHARD_ORIGIN}")
    if origin == name:
        return 0
    if number != origin and number.isdigit() and number == str(int(number)):
        return int(number)
    raise CheckpointError(
        f"checkpoint origin {origin!r} is not the key's log {name!r} (or one of its "
        f"shards', {name}{SHARD_ORIGIN}N): this key does not speak for that log"
    )


def origin_of(name: str, shard: int) -> str:
    """The origin of shard ``shard``'s log under the key ``name``."""
    return name if shard == 0 else f"{name}{SHARD_ORIGIN}{shard}"
