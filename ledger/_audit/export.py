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
rewrite of the whole file shows. Format 3 (``ctxledger-export/3``) adds the
manifest's ``log``: the ledger's latest signed checkpoint and an inclusion
proof per event (``ledger._audit.export_proofs``), which
``verify_export(path, public_key=...)`` checks offline.

``verify_export`` detects an edited, deleted or reordered line: every line must
be canonical, each event must link to the one before, and the manifest must
match what the file holds. Whatever bytes the file holds, the answer is a
report; only a path that names no readable regular file raises
(InvalidContextInput).
"""

import os
from collections.abc import Callable, Iterable
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from ledger._audit.chain import Fault
from ledger._audit.export_proofs import ExportLog
from ledger._audit.files import replaced_whole
from ledger._domain.hashing import canonical_encoding, chain_hash, record_hash
from ledger._domain.models import LedgerEvent, UtcDatetime

FORMAT = "ctxledger-export/3"
FORMATS = ("ctxledger-export/1", "ctxledger-export/2", FORMAT)
"""The formats ``verify_export`` reads: exports of every release."""
MAX_DEPTH = 64
"""Deepest nesting of a line's containers; an event's is about 11 (its metadata
at most 8), and deeper ones would exhaust the recursion limit in encoders."""
SEALED_DETAILS_SHOWN = frozenset({"metadata_salt", "erased"})


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
    log: ExportLog | None = None
    """Format 3: the signed checkpoint and the events' inclusion proofs."""

    def expected_digest(self) -> str:
        # An export of format 1 or 2 has no ``log``: its digest leaves it out.
        left_out = {"digest"} if self.log is not None else {"digest", "log"}
        return record_hash(self.model_dump(mode="json", exclude=left_out))


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
    prove: Callable[[list[int]], ExportLog | None] = lambda _: None,
) -> ExportManifest:
    """Writes the export to ``path`` atomically: a complete file or none at all.
    ``prove`` gives the log proofs of the versions written."""
    with replaced_whole(path) as handle:
        versions: list[int] = []
        head = None
        for event in events:
            record = event.model_dump(mode="json")
            handle.write(canonical_encoding(record) + b"\n")
            versions.append(event.version)
            head = chain_hash(record)
        count = len(versions)
        first, last = (versions[0], versions[-1]) if versions else (None, None)
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
            log=prove(versions),
        )
        manifest = manifest.model_copy(update={"digest": manifest.expected_digest()})
        handle.write(manifest_line(manifest) + b"\n")
    return manifest


def manifest_line(manifest: ExportManifest) -> bytes:
    """The manifest as the export's last line holds it (without its newline):
    without ``log`` when it has none, as formats 1 and 2 wrote it."""
    left_out = None if manifest.log is not None else {"log"}
    return canonical_encoding(
        {"manifest": manifest.model_dump(mode="json", exclude=left_out)}
    )
