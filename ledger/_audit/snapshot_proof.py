"""Proves each user's snapshots against the events: a snapshot is an optimisation,
never evidence, so it must hold exactly the fold of the events up to its version
(``ledger._audit.fold``), whatever its format and whether or not it opens.

During verification's one pass over the log, a stream that has snapshots folds
its events as the pass reads them. At each snapshot version the pass keeps a copy
of the fold (a witness); the snapshots are read and compared a batch at a time,
so a stream costs its fold and at most SNAPSHOT_BATCH witnesses. A snapshot the
pass kept no witness for (stored while the pass ran) is compared with a fold of
the stream read again. A snapshot newer than the last event shows that events at
the end were deleted.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from uuid import UUID

from eventsourcing.persistence import StoredEvent

from ledger._audit.chain import ChainBreak
from ledger._audit.fold import Fold
from ledger._domain.snapshot import UserSnapshot
from ledger._store.application import LedgerApplication
from ledger._store.chain_reads import Read, exact_read
from ledger._store.codec import DECODE_ERRORS

SNAPSHOT_BATCH = 16
"""How many snapshot versions of a stream the pass looks out for at a time: a
stream keeps at most this many witnesses, and costs two reads of its snapshots
per this many."""
PAGE = 2000


@dataclass(slots=True)
class StreamSnapshots:
    """What the pass keeps of one stream to prove its snapshots."""

    stream: UUID | str
    fold: Fold | None = None
    """The events folded so far; None once no listed snapshot is ahead."""
    awaited: list[int] = field(default_factory=list)
    """The next snapshot versions (at most SNAPSHOT_BATCH) to keep a witness at."""
    listed: int = 0
    """The snapshots up to this version have been listed."""
    witnesses: dict[int, Fold] = field(default_factory=dict)
    """The fold at each awaited version reached, not yet compared."""
    fault: ChainBreak | None = None
    """The first snapshot found altered."""
    unwitnessed: list[int] = field(default_factory=list)
    """Snapshots the pass kept no witness for: proven by a fold read again."""


class SnapshotProver:
    """Proves the snapshots of one application's streams."""

    def __init__(self, app: LedgerApplication) -> None:
        self.recorder = app.log_reader
        self.snapshots = app.snapshots
        self.mapper = app.mapper
        self.records = app.records
        self.backend = app.backend

    def streams(self) -> list[UUID | str]:
        """The streams that have snapshots."""
        if self.snapshots is None:
            return []
        return self.backend.snapshot_streams(self.snapshots.recorder)

    def start(self, stream: UUID | str) -> StreamSnapshots:
        """A stream met before its first event: its first snapshots listed, and
        a fold begun if one is ahead."""
        snaps = StreamSnapshots(stream)
        self._await(snaps, 0)
        if snaps.awaited:
            snaps.fold = Fold()
        return snaps

    def step(self, snaps: StreamSnapshots, version: int, read: Read) -> None:
        """Folds the stream's next event (its version and read) and keeps a
        witness where a snapshot was listed."""
        fold = snaps.fold
        if fold is None:
            return
        try:
            fold.apply(read.record, read.hash)
        except (ValueError, TypeError) as error:
            self._fail(snaps, version, f"the events cannot be replayed: {error}")
            snaps.fold = None
            return
        if snaps.awaited and snaps.awaited[0] == version:
            del snaps.awaited[0]
            snaps.witnesses[version] = fold.copy()
            if not snaps.awaited:
                self._check_witnessed(snaps)
                self._await(snaps, version)
                if not snaps.awaited:
                    snaps.fold = None  # nothing ahead to prove: memory freed

    def after_pass(
        self, snaps: StreamSnapshots, version: int, more_events: Callable[[], bool]
    ) -> ChainBreak | None:
        """The stream's first snapshot fault once the pass read it to
        ``version``: a snapshot newer than its last event (unless ``more_events``
        were appended since the pass read the log), else the first altered."""
        self._check_witnessed(snaps)
        newer = max(snaps.awaited, default=0)  # listed, never reached
        snaps.awaited.clear()
        while True:
            listed = self._listed(snaps.stream, snaps.listed)
            for snapshot in listed:
                if snapshot.originator_version > version:
                    newer = snapshot.originator_version
                else:  # stored while the pass ran
                    snaps.unwitnessed.append(snapshot.originator_version)
            if listed:
                snaps.listed = listed[-1].originator_version
            if len(listed) < SNAPSHOT_BATCH:
                break
        if newer and not more_events():
            return missing(version, newer)
        if snaps.unwitnessed:
            self._prove_by_reading(snaps, max(snaps.unwitnessed))
        return snaps.fault

    def _await(self, snaps: StreamSnapshots, version: int) -> None:
        """Lists the stream's next snapshot versions; one at or before
        ``version`` (stored while the pass ran) is proven after the pass."""
        while not snaps.awaited:
            listed = self._listed(snaps.stream, snaps.listed)
            for snapshot in listed:
                if snapshot.originator_version > version:
                    snaps.awaited.append(snapshot.originator_version)
                else:
                    snaps.unwitnessed.append(snapshot.originator_version)
            if listed:
                snaps.listed = listed[-1].originator_version
            if len(listed) < SNAPSHOT_BATCH:
                return

    def _check_witnessed(self, snaps: StreamSnapshots) -> None:
        if not snaps.witnesses:
            return
        witnesses, snaps.witnesses = snaps.witnesses, {}
        first, last = min(witnesses), max(witnesses)
        for snapshot in self._listed(snaps.stream, first - 1, up_to=last):
            fold = witnesses.get(snapshot.originator_version)
            if fold is not None:
                self._compare(snaps, snapshot, fold)

    def _compare(self, snaps: StreamSnapshots, stored: StoredEvent, fold: Fold) -> None:
        version = stored.originator_version
        snapshot = self._decoded(stored)
        if snapshot is None:
            detail = f"the snapshot of version {version} cannot be decoded"
            self._fail(snaps, version, detail)
            return
        differing = fold.differs_from(snapshot)
        if differing is not None:
            self._fail(
                snaps,
                version,
                f"the snapshot of version {version} differs from the fold of the "
                f"events up to it ({differing}): the snapshot was altered",
            )

    def _prove_by_reading(self, snaps: StreamSnapshots, up_to: int) -> None:
        """Proves the unwitnessed snapshots by a fold of the stream read again."""
        wanted = set(snaps.unwitnessed)
        fold, after = Fold(), 0
        while after < up_to:
            page = self.recorder.select_events(
                snaps.stream, gt=after, lte=up_to, limit=PAGE
            )
            if not page:
                return
            for stored in page:
                read = exact_read(stored, self.records)
                version = stored.originator_version
                if isinstance(read, str):
                    self._fail(snaps, version, f"the events cannot be replayed: {read}")
                    return
                fold.apply(read.record, read.hash)
                if version in wanted:
                    at = self._listed(snaps.stream, version - 1, up_to=version)
                    for snapshot in at:
                        self._compare(snaps, snapshot, fold)
            after = page[-1].originator_version

    def _decoded(self, stored: StoredEvent) -> UserSnapshot | None:
        try:
            decoded = self.mapper.to_domain_event(stored)
        except DECODE_ERRORS:  # any damage is a finding; LedgerError passes
            return None
        return decoded if isinstance(decoded, UserSnapshot) else None

    def _listed(
        self, stream: UUID | str, after: int, *, up_to: int | None = None
    ) -> list[StoredEvent]:
        if self.snapshots is None:
            return []
        return list(
            self.snapshots.recorder.select_events(
                stream,
                gt=after,
                lte=up_to,
                limit=None if up_to is not None else SNAPSHOT_BATCH,
            )
        )

    @staticmethod
    def _fail(snaps: StreamSnapshots, version: int, detail: str) -> None:
        if snaps.fault is None or version < snaps.fault.version:
            snaps.fault = ChainBreak(version=version, fault="altered", detail=detail)


def missing(head_version: int, newest: int) -> ChainBreak:
    """A snapshot newer than the last event: the events after it were deleted."""
    return ChainBreak(
        version=head_version + 1,
        fault="missing",
        detail=f"a snapshot of version {newest} exists, but the last event "
        f"is version {head_version}: the events after it were deleted",
    )
