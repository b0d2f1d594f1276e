"""Checkpoint keys and notes as the caller gives them: key text or a file.

``write_key_pair`` writes ``PREFIX.key`` (the signer key, mode 0600, never
overwritten) and ``PREFIX.pub`` (the verifier key, in the note format
``name+keyid+base64``). A file of checkpoints holds one signed note per log (one
per shard), separated by a blank line (``split_notes``).
"""

import os
import stat
from pathlib import Path

from ledger._audit.notes import Signer, Verifier, generate_key
from ledger.errors import CheckpointError

KeyInput = str | os.PathLike[str]
"""A key's text, or the path of the file that holds it."""
_SIGNATURE_DASH = "\u2014 "
MAX_KEY_FILE = 4096
MAX_NOTES_FILE = 1 << 20


def write_key_pair(origin: str, prefix: KeyInput) -> tuple[Path, Path]:
    """Generates an Ed25519 key named ``origin`` and writes its two files; the
    paths of the signer key and of the verifier key."""
    signer_text, verifier_text = generate_key(origin)
    private, public = Path(f"{os.fspath(prefix)}.key"), Path(f"{os.fspath(prefix)}.pub")
    for path in (private, public):
        if path.exists():
            raise CheckpointError(
                f"{path} exists: a key is never overwritten; choose another --out"
            )
    try:
        handle = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(signer_text + "\n")
        public.write_text(verifier_text + "\n", encoding="utf-8")
    except OSError as error:
        raise CheckpointError(f"cannot write the key files: {error}") from error
    return private, public


def signer_from(key: KeyInput) -> Signer:
    """The signer of a key given as its text or its file."""
    return Signer.from_text(_key_text(key))


def verifier_from(key: KeyInput) -> Verifier:
    """The verifier of a key given as its text or its file."""
    return Verifier.from_text(_key_text(key))


def notes_from(notes: KeyInput) -> list[str]:
    """The signed notes given as text or in a file (one or more)."""
    text = _text(notes, MAX_NOTES_FILE) if _is_path(notes) else str(notes)
    return split_notes(text)


def split_notes(text: str) -> list[str]:
    """The notes of a text holding one or more, separated by a blank line."""
    blocks = text.split("\n\n")
    notes, body = [], None
    for block in blocks:
        if body is None:
            body = block
            continue
        signatures, _, rest = block.partition("\n")
        lines = [signatures]
        while rest and rest.startswith(_SIGNATURE_DASH):
            line, _, rest = rest.partition("\n")
            lines.append(line)
        notes.append(f"{body}\n\n" + "\n".join(lines) + "\n")
        body = rest or None
    if body is not None and body.strip():
        raise CheckpointError(
            "the checkpoint text ends with lines that are not a signed note: "
            "a note is its text, a blank line and its signature lines"
        )
    if not notes:
        raise CheckpointError("no signed note found in the checkpoint text")
    return notes


def _key_text(key: KeyInput) -> str:
    if not _is_path(key):
        text = str(key).strip()
        if "+" not in text:
            raise CheckpointError(
                f"{text[:80]!r} is neither a file that can be read nor a key's "
                "text (name+keyid+base64): give the key file ctxledger checkpoint "
                "keygen wrote"
            )
        return text
    return _text(key, MAX_KEY_FILE).strip()


def _is_path(value: KeyInput) -> bool:
    """A path object, or a string that names an existing file; else the text."""
    if isinstance(value, os.PathLike):
        return True
    if not isinstance(value, str):
        raise CheckpointError(f"a key or note is text or a path, not {type(value)}")
    try:
        return "\n" not in value and Path(value).is_file()
    except (OSError, ValueError):  # too long for a file name, a NUL in it
        return False


def _text(path: KeyInput, limit: int) -> str:
    """A regular file's text (a pipe or device put at the path is refused,
    never waited on)."""
    shown = os.fspath(path)
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as error:
        raise CheckpointError(f"cannot read {shown}: {error}") from error
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise CheckpointError(f"{shown} is not a regular file")
        with os.fdopen(descriptor, "rb", closefd=False) as handle:
            data = handle.read(limit + 1)
    except OSError as error:
        raise CheckpointError(f"cannot read {shown}: {error}") from error
    finally:
        os.close(descriptor)
    if len(data) > limit:
        raise CheckpointError(f"{shown} is over {limit} bytes")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise CheckpointError(f"{shown} is not UTF-8 text") from error
