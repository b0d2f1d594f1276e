"""Exports of a user's history that anyone can check offline, without the ledger.

An export is JSON Lines, UTF-8. Each event is one line: its ``LedgerEvent`` record
as it was written, in the chain's canonical encoding. The hash that the next
event's ``prev_hash`` holds is the SHA-256 of the line's ``chain_form``: in
format 1 (``ctxledger-export/1``) that is the line itself; in format 2
(``ctxledger-export/2``, events with sealed personal data) it leaves out the
metadata and its salt, which the line's ``metadata_commitment`` stands for (the
check recomputes that commitment from them, or accepts it alone once the
metadata is erased). The last line is the manifest::

    {"manifest":{"count":3,"first_version":1,"format":"ctxledger-export/2",
     "head_hash":"...","last_version":3,"since":null,"until":null,"user_id":"alice",...}}

``head_hash`` is the hash of the last event line; record it elsewhere and even a
rewrite of the whole file shows. ``verify_export`` detects an edited, deleted or
reordered line: every line must be canonical, each event must link to the one
before, and the manifest must match what the file holds. Whatever bytes the
file holds, the answer is a report; only a path that names no readable regular
file raises (InvalidContextInput).
"""

import json
import math
import os
import re
import secrets
import stat
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from pydantic import BaseModel, ConfigDict, ValidationError

from ledger.audit.chain import (
    Fault,
    Link,
    find_break,
)
from ledger.domain.hashing import (
    GENESIS_HASH,
    canonical_encoding,
    chain_hash,
    metadata_commitment,
    record_hash,
)
from ledger.domain.models import LedgerEvent, UtcDatetime
from ledger.errors import InvalidContextInput, shorten

FORMAT = "ctxledger-export/2"
FORMATS = ("ctxledger-export/1", FORMAT)
"""The formats ``verify_export`` reads: exports of every release."""
MAX_DEPTH = 64
"""Deepest nesting of a line's containers; an event's is about 11 (its metadata
at most 8), and deeper ones would exhaust the recursion limit in encoders."""
SEALED_DETAILS_SHOWN = frozenset({"metadata_salt", "erased"})
_HEX_64 = re.compile(r"[0-9a-f]{64}")
_INT64 = 2**63
_INT64_DIGITS = len(str(-_INT64))


class ExportManifest(BaseModel):
    """The last line of an export: what the lines before it must be."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: str
    user_id: str
    count: int
    first_version: int | None
    last_version: int | None
    head_hash: str | None
    since: UtcDatetime | None
    until: UtcDatetime | None
    exported_at: UtcDatetime
    digest: str = ""
    """The hash of the manifest's other fields, so an edit to any of them shows."""

    def expected_digest(self) -> str:
        return record_hash(self.model_dump(mode="json", exclude={"digest"}))


class ExportFault(BaseModel):
    """The first problem found in an export."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    line: int
    version: int | None
    fault: Fault
    detail: str

    def __str__(self) -> str:
        where = f"line {self.line}" + (
            "" if self.version is None else f" (version {self.version})"
        )
        return f"{where}: {self.fault}: {self.detail}"


class ExportReport(BaseModel):
    """What ``verify_export`` found."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    manifest: ExportManifest | None
    events: int
    fault: ExportFault | None

    @property
    def intact(self) -> bool:
        return self.fault is None


def write_export(
    path: str | os.PathLike[str],
    events: Iterable[LedgerEvent],
    *,
    user_id: str,
    since: datetime | None,
    until: datetime | None,
    exported_at: datetime,
) -> ExportManifest:
    """Writes the export to ``path`` atomically: a complete file or none at all."""
    with replaced_whole(path) as handle:
        count, first, last, head = 0, None, None, None
        for event in events:
            record = event.model_dump(mode="json")
            handle.write(canonical_encoding(record) + b"\n")
            count += 1
            first = event.version if first is None else first
            last, head = event.version, chain_hash(record)
        manifest = ExportManifest(
            format=FORMAT,
            user_id=user_id,
            count=count,
            first_version=first,
            last_version=last,
            head_hash=head,
            since=since,
            until=until,
            exported_at=exported_at,
        )
        manifest = manifest.model_copy(update={"digest": manifest.expected_digest()})
        handle.write(_manifest_line(manifest) + b"\n")
    return manifest


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


def _manifest_line(manifest: ExportManifest) -> bytes:
    return canonical_encoding({"manifest": manifest.model_dump(mode="json")})


def verify_export(path: str | os.PathLike[str]) -> ExportReport:
    """Checks an export file offline; the report says where it first fails.

    Whatever the file holds, the answer is a report; a path that names no
    readable file raises InvalidContextInput.
    """
    source = file_path(path)
    checker = _Checker(str(source))
    return checker.run(_read(source))


def _read(path: Path) -> bytes:
    try:
        # Non-blocking, so that a pipe put at the path cannot stall the check.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise _unreadable(path, "does not exist") from None
    except OSError as error:
        raise _unreadable(path, f"cannot be read: {error.strerror or error}") from None
    try:
        mode = os.fstat(descriptor).st_mode
        if stat.S_ISDIR(mode):
            raise _unreadable(path, "is a folder")
        if not stat.S_ISREG(mode):
            raise _unreadable(path, "is not a regular file (a device, pipe or socket)")
        with os.fdopen(descriptor, "rb", closefd=False) as handle:
            return handle.read()
    except OSError as error:
        raise _unreadable(path, f"cannot be read: {error.strerror or error}") from None
    finally:
        os.close(descriptor)


def _unreadable(path: Path, problem: str) -> InvalidContextInput:
    return InvalidContextInput(
        "path",
        str(path),
        problem,
        "give the path of an export file that you may read (ctxledger export "
        "writes one)",
    )


class _Fault(Exception):
    def __init__(self, fault: ExportFault) -> None:
        self.fault = fault


class _Checker:
    def __init__(self, path: str) -> None:
        self.path = path
        self.manifest: ExportManifest | None = None
        self.events = 0

    def run(self, data: bytes) -> ExportReport:
        try:
            self._check(data)
            fault = None
        except _Fault as found:
            fault = found.fault
        return ExportReport(
            path=self.path, manifest=self.manifest, events=self.events, fault=fault
        )

    def _check(self, data: bytes) -> None:
        lines = data.split(b"\n")
        if lines[-1] != b"":
            _fail(len(lines), None, "altered", "the file does not end with a newline")
        lines.pop()
        if not lines:
            _fail(1, None, "missing", "the file is empty: no manifest")
        records = [_parse(number, raw) for number, raw in enumerate(lines, 1)]
        *event_records, last = records
        self.manifest = _manifest(len(lines), last)
        events = [
            _event(number, record, self.manifest)
            for number, record in enumerate(event_records, 1)
        ]
        self.events = len(events)
        if self.manifest.format == FORMATS[0]:
            for number, event in enumerate(events, 1):
                if "metadata_commitment" in event.details:
                    _fail(
                        number,
                        event.version,
                        "altered",
                        "an event with a metadata_commitment in a format-1 export",
                    )
        links = [
            Link(event.version, chain_hash(record), event.prev_hash)
            for event, record in zip(events, event_records, strict=True)
        ]
        first = self.manifest.first_version
        whole = self.manifest.since is None  # from the user's first event
        if whole and first not in (None, 1):
            _fail(len(lines), None, "altered", "a whole history starts at version 1")
        if links:
            start = 1 if whole else first or links[0].version
            found = find_break(
                links,
                first_version=start,
                first_prev=GENESIS_HASH if whole else None,
            )
            if found is not None:
                line = _line_of(links, found.version, start)
                _fail(line, found.version, found.fault, found.detail)
        self._match_manifest(links, len(lines))

    def _match_manifest(self, links: list[Link], manifest_line: int) -> None:
        manifest = self.manifest
        assert manifest is not None  # noqa: S101
        last = links[-1] if links else None
        if manifest.last_version is not None and (
            last is None or last.version < manifest.last_version
        ):
            start = 1 if last is None else last.version + 1
            missing = (
                f"version {start}"
                if start == manifest.last_version
                else f"versions {start} to {manifest.last_version}"
            )
            _fail(
                manifest_line,
                start,
                "missing",
                f"the manifest lists up to version {manifest.last_version}; "
                f"{missing} absent",
            )
        if (
            manifest.count != len(links)
            or manifest.first_version != (links[0].version if links else None)
            or manifest.last_version != (last.version if last else None)
        ):
            _fail(
                manifest_line,
                None,
                "altered",
                f"the manifest says {manifest.count} events, versions "
                f"{manifest.first_version} to {manifest.last_version}; the file "
                f"holds {len(links)}"
                + (f", versions {links[0].version} to {last.version}" if last else ""),
            )
        if last is not None and manifest.head_hash != last.hash:
            _fail(
                manifest_line - 1,
                last.version,
                "altered",
                "the last event's hash differs from the manifest's head_hash",
            )


def _fail(line: int, version: int | None, fault: Fault, detail: str) -> NoReturn:
    raise _Fault(ExportFault(line=line, version=version, fault=fault, detail=detail))


def _parse(number: int, raw: bytes) -> dict[str, Any]:
    try:
        record = json.loads(
            raw.decode("utf-8"),
            parse_constant=_no_constant,
            parse_float=_finite,
            parse_int=_int64,
        )
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError included
        _fail(number, None, "altered", f"the line is not JSON: {error}")
    if not isinstance(record, dict):
        _fail(number, None, "altered", "the line is not a JSON object")
    if _depth(record) > MAX_DEPTH:
        _fail(number, None, "altered", f"the line nests deeper than {MAX_DEPTH}")
    try:
        canonical = canonical_encoding(record)
    except ValueError as error:  # a lone surrogate, such as "\\ud800"
        _fail(number, None, "altered", f"the line cannot be encoded: {error}")
    if canonical != raw:
        _fail(number, None, "altered", "the line is not in the canonical encoding")
    return record


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        msg = f"{shorten(text)} is out of range"
        raise ValueError(msg)
    return number


def _int64(text: str) -> int:
    # Checked by length first: int() of thousands of digits is slow, then refused.
    number = int(text) if len(text) <= _INT64_DIGITS else None
    if number is None or not -_INT64 <= number < _INT64:
        msg = f"{shorten(text)} is out of the signed 64-bit range"
        raise ValueError(msg)
    return number


def _no_constant(name: str) -> None:
    msg = f"{name} is not allowed"
    raise ValueError(msg)


def _depth(record: dict[str, Any]) -> int:
    """How deep containers nest in ``record`` (itself 1), counted without
    recursion; stops counting past MAX_DEPTH."""
    deepest = 0
    stack: list[tuple[object, int]] = [(record, 1)]
    while stack and deepest <= MAX_DEPTH:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            deepest = max(deepest, depth)
            items = value.values() if isinstance(value, dict) else value
            stack.extend((item, depth + 1) for item in items)
    return deepest


def _manifest(number: int, record: dict[str, Any]) -> ExportManifest:
    body = record.get("manifest")
    if set(record) != {"manifest"} or not isinstance(body, dict):
        _fail(number + 1, None, "missing", "the last line is not the manifest")
    try:
        manifest = ExportManifest.model_validate(body)
    except (ValidationError, OverflowError) as error:  # a time beyond UTC's years
        _fail(number, None, "altered", f"the manifest is not valid: {error}")
    if manifest.format not in FORMATS:
        _fail(number, None, "altered", f"unknown format {shorten(manifest.format)}")
    if _manifest_line(manifest) != canonical_encoding(record):
        _fail(number, None, "altered", "the manifest's values are not canonical")
    if manifest.digest != manifest.expected_digest():
        _fail(number, None, "altered", "the manifest's digest does not match it")
    return manifest


def _event(
    number: int, record: dict[str, Any], manifest: ExportManifest
) -> LedgerEvent:
    if "manifest" in record:
        _fail(number, None, "altered", "a manifest before the last line")
    try:
        event = LedgerEvent.model_validate(record)
    except (ValidationError, OverflowError) as error:  # a time beyond UTC's years
        _fail(number, None, "altered", f"the event is not valid: {error}")
    if event.model_dump(mode="json") != record:
        _fail(number, event.version, "altered", "the event's values are not canonical")
    problem = _commitment_problem(event.details)
    if problem is not None:
        _fail(number, event.version, "altered", problem)
    if event.user_id != manifest.user_id:
        _fail(
            number,
            event.version,
            "altered",
            f"the event is of user {shorten(event.user_id)}, the export of "
            f"{shorten(manifest.user_id)}",
        )
    if (manifest.since is not None and event.occurred_at < manifest.since) or (
        manifest.until is not None and event.occurred_at >= manifest.until
    ):
        _fail(number, event.version, "altered", "the event is outside the period")
    return event


def _commitment_problem(details: dict[str, Any]) -> str | None:
    """Whether an event's shown metadata is what its commitment was made of."""
    commitment = details.get("metadata_commitment")
    erased = details.get("erased")
    salt, metadata = details.get("metadata_salt"), details.get("metadata")
    problem: str | None = None
    if commitment is None:
        if SEALED_DETAILS_SHOWN & details.keys():
            problem = "the event has sealed details but no metadata_commitment"
    elif not isinstance(commitment, str):
        problem = "its metadata_commitment is not a hash"
    elif erased is True:
        if metadata is not None or "metadata_salt" in details:
            problem = "the event is marked erased but shows metadata"
    elif "erased" in details:
        problem = "its erased mark is not true"
    elif not _opens(commitment, salt, metadata):
        problem = "its metadata is not what its metadata_commitment was made of"
    return problem


def _opens(commitment: str, salt: object, metadata: object) -> bool:
    return (
        isinstance(salt, str)
        and _HEX_64.fullmatch(salt) is not None
        and isinstance(metadata, dict)
        and metadata_commitment(salt, metadata) == commitment
    )


def _line_of(links: list[Link], version: int, first_version: int) -> int:
    """The line of a break at ``version``: the line that holds it, or where the
    versions first leave their sequence (the gap of a missing version, or a
    version out of place) if that comes first."""
    for number, link in enumerate(links, 1):
        if link.version == version or link.version != first_version + number - 1:
            return number
    return len(links) + 1
