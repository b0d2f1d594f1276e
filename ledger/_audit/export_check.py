"""``verify_export``: checks an export file offline, without the ledger (the
format is described in ``ledger._audit.export``)."""

import json
import math
import os
import re
import stat
from pathlib import Path
from typing import Any, NoReturn, cast

from pydantic import ValidationError

from ledger._audit.chain import Fault, Link, find_break
from ledger._audit.checkpoint_files import KeyInput
from ledger._audit.export import (
    FORMATS,
    SEALED_DETAILS_SHOWN,
    ExportFault,
    ExportManifest,
    ExportReport,
    manifest_line,
)
from ledger._audit.export_proofs import LogProblem, check_log, signed_by
from ledger._audit.files import file_path
from ledger._audit.notes import Checkpoint, Verifier
from ledger._domain.hashing import (
    GENESIS_HASH,
    canonical_encoding,
    chain_hash,
    commitment_opens,
)
from ledger._domain.models import LedgerEvent
from ledger.errors import InvalidContextInput, shorten

MAX_DEPTH = 64
"""Deepest nesting of a line's containers; an event's is about 11 (its metadata
at most 8), and deeper ones would exhaust the recursion limit in encoders."""
_HEX_64 = re.compile(r"[0-9a-f]{64}")
_INT64 = 2**63
_INT64_DIGITS = len(str(-_INT64))


def verify_export(
    path: str | os.PathLike[str],
    *,
    public_key: KeyInput | None = None,
    checkpoint: KeyInput | None = None,
) -> ExportReport:
    """Checks an export file offline; the report says where it first fails.

    With ``public_key`` (the checkpoint verifier key's text or file) it also
    proves each event in the signed log the export carries, and that the export
    reaches the user's last signed event when it falls in the export's period
    (``ledger._audit.export_proofs``). ``checkpoint`` (a signed note, text or
    file, that the auditor holds from where checkpoints are published) also
    requires the export's checkpoint to be no older than that one.
    Whatever the file holds, the answer is a report; a path that names no
    readable file raises InvalidContextInput, a key that is not one
    CheckpointError.
    """
    source = file_path(path)
    checker = _Checker(str(source), *signed_by(public_key, checkpoint))
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
    def __init__(
        self, path: str, verifier: Verifier | None, trusted: list[Checkpoint]
    ) -> None:
        self.path = path
        self.verifier = verifier
        self.trusted = trusted
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
        lines = _lines(data)
        records = [_parse(number, raw) for number, raw in enumerate(lines, 1)]
        *event_records, last = records
        self.manifest = _manifest(len(lines), last)
        events = [
            _event(number, record, self.manifest)
            for number, record in enumerate(event_records, 1)
        ]
        self.events = len(events)
        _check_format(self.manifest, events)
        links = [
            Link(event.version, chain_hash(record), event.prev_hash)
            for event, record in zip(events, event_records, strict=True)
        ]
        _check_chain(links, self.manifest, len(lines))
        _check_versions(links, self.manifest, len(lines))
        _check_head(links, self.manifest, len(lines))
        if self.verifier is not None:
            _check_proofs(links, self.manifest, self.verifier, self.trusted)


def _lines(data: bytes) -> list[bytes]:
    """The file's lines, without their newlines; the file must end with one and
    hold at least the manifest."""
    lines = data.split(b"\n")
    if lines[-1] != b"":
        _fail(len(lines), None, "altered", "the file does not end with a newline")
    lines.pop()
    if not lines:
        _fail(1, None, "missing", "the file is empty: no manifest")
    return lines


def _check_format(manifest: ExportManifest, events: list[LedgerEvent]) -> None:
    """A format-1 export holds no event with a commitment (format 2 introduced it)."""
    if manifest.format == FORMATS[0]:
        for number, event in enumerate(events, 1):
            if "metadata_commitment" in event.details:
                _fail(
                    number,
                    event.version,
                    "altered",
                    "an event with a metadata_commitment in a format-1 export",
                )


def _check_chain(links: list[Link], manifest: ExportManifest, last_line: int) -> None:
    """The events link up, from the genesis hash for a whole history."""
    first = manifest.first_version
    whole = manifest.since is None  # from the user's first event
    if whole and first not in (None, 1):
        _fail(last_line, None, "altered", "a whole history starts at version 1")
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


def _check_versions(
    links: list[Link], manifest: ExportManifest, last_line: int
) -> None:
    """The file holds every version the manifest lists, and as many events."""
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
            last_line,
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
            last_line,
            None,
            "altered",
            f"the manifest says {manifest.count} events, versions "
            f"{manifest.first_version} to {manifest.last_version}; the file "
            f"holds {len(links)}"
            + (f", versions {links[0].version} to {last.version}" if last else ""),
        )


def _check_head(links: list[Link], manifest: ExportManifest, last_line: int) -> None:
    """The last event's hash is the manifest's head_hash."""
    last = links[-1] if links else None
    if last is not None and manifest.head_hash != last.hash:
        _fail(
            last_line - 1,
            last.version,
            "altered",
            "the last event's hash differs from the manifest's head_hash",
        )


def _check_proofs(
    links: list[Link],
    manifest: ExportManifest,
    verifier: Verifier,
    trusted: list[Checkpoint],
) -> None:
    """Every event is proved in the signed log the export carries."""
    try:
        check_log(manifest.log, links, verifier, manifest, trusted)
    except LogProblem as problem:
        version = problem.version
        lines = [n for n, link in enumerate(links, 1) if link.version == version]
        fault = cast(Fault, problem.fault)
        _fail(lines[0] if lines else len(links) + 1, version, fault, problem.detail)


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
    if manifest_line(manifest) != canonical_encoding(record):
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
        and commitment_opens(commitment, salt, metadata)
    )


def _line_of(links: list[Link], version: int, first_version: int) -> int:
    """The line of a break at ``version``: the line that holds it, or where the
    versions first leave their sequence (the gap of a missing version, or a
    version out of place) if that comes first."""
    for number, link in enumerate(links, 1):
        if link.version == version or link.version != first_version + number - 1:
            return number
    return len(links) + 1
