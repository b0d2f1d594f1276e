"""Files the ledger writes whole or not at all (exports, the CLI's outputs), and
the checks that say in advance why a path cannot be written."""

import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from ledger.errors import InvalidContextInput, shorten


def file_path(path: object, field: str = "path") -> Path:
    """``path`` (a str or path-like of str) as a Path; InvalidContextInput if it is
    of another type, empty, or holds a NUL character (no file can be named so)."""
    try:
        text = os.fspath(path) if isinstance(path, str | os.PathLike) else None
    except Exception:  # noqa: BLE001  (a path-like whose __fspath__ fails)
        text = None
    if not isinstance(text, str):
        raise InvalidContextInput(
            field, path, "is not a path", "pass the file's path as a str or a Path"
        )
    if not text:
        raise InvalidContextInput(field, text, "is empty", "give the path of a file")
    if text.endswith(("/", os.sep)):
        raise InvalidContextInput(
            field, text, "ends with a slash", "give the path of a file, not a folder"
        )
    if "\x00" in text:
        raise InvalidContextInput(
            field, text, "holds a NUL character", "remove it from the file's path"
        )
    return Path(text)


def writable(path: object, field: str = "path") -> tuple[Path, Path]:
    """The file and its folder; InvalidContextInput if it cannot be written there."""
    target = file_path(path, field)
    folder = target.parent
    folder_mode = _mode(folder, target, field)
    if folder_mode is None:
        raise InvalidContextInput(
            field, str(target), "is in a folder that does not exist", "create it first"
        )
    if not stat.S_ISDIR(folder_mode):
        raise InvalidContextInput(
            field,
            str(target),
            f"is in {shorten(str(folder))}, which is not a folder",
            "choose a file in a folder",
        )
    mode = _mode(target, target, field)
    if mode is not None and stat.S_ISDIR(mode):
        raise InvalidContextInput(
            field, str(target), "is a folder", "give the path of a file to write"
        )
    if mode is not None and not stat.S_ISREG(mode):
        # Renaming over it would replace a device, a pipe or a socket with a file.
        raise InvalidContextInput(
            field,
            str(target),
            "is not a regular file (a device, pipe or socket)",
            "give the path of a regular file to write or replace",
        )
    return target, folder


def _mode(path: Path, target: Path, field: str) -> int | None:
    """The mode of ``path`` (symbolic links followed); None if there is none."""
    try:
        return path.stat().st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as error:
        raise _unwritable(target, error, field) from None


@contextmanager
def replaced_whole(path: object, field: str = "path") -> Iterator[BinaryIO]:
    """A file to write that replaces ``path`` only once the body has finished.

    On any failure the temporary file is removed and the target left as it was;
    an OSError becomes InvalidContextInput. A new file gets the mode any new
    file gets (0666 less the umask); a file replaced keeps its mode.
    """
    target, folder = writable(path, field)
    temporary = folder / f".{target.name}.{secrets.token_hex(8)}.part"
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as error:
        raise _unwritable(target, error, field, creating_in=folder) from None
    try:
        with os.fdopen(descriptor, "wb") as handle:
            _keep_mode_of(target, descriptor)
            yield handle
            handle.flush()
            os.fsync(descriptor)
        temporary.replace(target)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _unwritable(target, error, field) from error
        raise


def _unwritable(
    target: Path, error: OSError, field: str, creating_in: Path | None = None
) -> InvalidContextInput:
    where = "" if creating_in is None else f" (no file can be created in {creating_in})"
    return InvalidContextInput(
        field,
        str(target),
        f"cannot be written: {error.strerror or error}{where}",
        "choose a file in a folder you may write to, on a disk with room; "
        "nothing was written",
    )


def _keep_mode_of(target: Path, descriptor: int) -> None:
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        return
    if stat.S_ISREG(mode):
        os.fchmod(descriptor, stat.S_IMODE(mode))
