"""Checks the users' hash chains against the events as they are stored.

One pass reads the ledger's log in order. Each event is decoded by the readers'
own decoder (``chain_reads.quick_read``, ``chain_reads.exact_read``), so an event
that every read of its user refuses is a finding here, and an event that passes
here is one the reads accept. A stream with a fault is then read again in version
order to say where it breaks and how (``chain.find_break``). Every snapshot is
proven against the fold of the events up to its version
(``ledger._audit.snapshot_proof``); the key table and erasures in progress are
checked against the events too.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple
from uuid import UUID

from eventsourcing.persistence import StoredEvent

from ledger._audit.chain import (
    ChainBreak,
    ChainReport,
    Link,
    UserChain,
    find_break,
)
from ledger._audit.key_findings import key_faults
from ledger._audit.snapshot_proof import SnapshotProver, StreamSnapshots
from ledger._domain.contexts import (
    user_aggregate_id,
)
from ledger._domain.events import (
    UserForgotten,
)
from ledger._domain.hashing import GENESIS_HASH
from ledger._store.application import LedgerApplication
from ledger._store.backends import as_stream_id, safe_head
from ledger._store.chain_reads import Read, Stored, exact_read, named_user, quick_read
from ledger._store.erasure import retired_below

PAGE_SIZE = 10_000
Progress = Callable[[int], None]


class _Row(NamedTuple):
    """A row of the log as the pass reads it (``Backend.log_rows``), with the
    stream id made once per stream, not once per event."""

    originator_id: UUID | str
    originator_version: int
    topic: str
    state: bytes


@dataclass(slots=True)
class _Stream:
    """One user's stream during the pass over the log."""

    originator_id: UUID | str
    user_id: str | None = None
    events: int = 0
    version: int = 0
    """The last version read; its event is read again from the store when needed
    (the exact path, and the head), so the pass keeps no event per user."""
    last_hash: str = GENESIS_HASH
    suspect: str | None = None
    """Why the stream needs a closer look (the first anomaly seen)."""
    snaps: StreamSnapshots | None = None
    """What proves the stream's snapshots (None: it has none)."""
    out_of_place: int = 0
    """A version stored in the log after the version that follows it (0: none)."""
    forgotten_at: int = 0
    """The version of the stream's last ``forgotten`` event (0: none)."""
    retired_below: int = 0
    """The key generations below it were retired by a ``forgotten`` event."""


class ChainVerifier:
    """Recomputes the hash chains of the events stored by one application."""

    def __init__(self, app: LedgerApplication, page_size: int = PAGE_SIZE) -> None:
        self.recorder = app.log_reader
        self.records = app.records
        self.backend = app.backend
        self.prover = SnapshotProver(app)
        self.keys = app.keys
        self.page_size = page_size
        self._key_faults: dict[UUID | str, ChainBreak] = {}

    def head(self) -> int:
        """The log's safe head: the last position ``all_users`` reads now."""
        return safe_head(self.recorder)

    def all_users(self, on_page: Progress | None = None) -> ChainReport:
        """Every stream in the log up to its safe head when the pass begins (an
        event committed later is left to the next pass, never half-seen)."""
        shared = self.records
        with self.keys.reading():  # each user's key looked up once a pass
            self.records = shared.in_scope()
            try:
                return self._all_users(on_page)
            finally:
                self.records = shared

    def _all_users(self, on_page: Progress | None) -> ChainReport:
        streams: dict[UUID | str, _Stream] = {}
        by_stored_id: dict[object, _Stream] = {}  # as the backend gives the id
        with_snapshots = set(self.prover.streams())
        start, head = 0, self.head()
        while True:
            page = self.backend.log_rows(self.recorder, start, self.page_size, head)
            for position, stored_id, version, topic, state in page:
                stream = by_stored_id.get(stored_id)
                if stream is None:
                    aggregate_id = as_stream_id(stored_id)
                    stream = streams.get(aggregate_id)
                    if stream is None:
                        stream = streams[aggregate_id] = _Stream(aggregate_id)
                        if aggregate_id in with_snapshots:
                            stream.snaps = self.prover.start(aggregate_id)
                    by_stored_id[stored_id] = stream
                self._step(stream, _Row(stream.originator_id, version, topic, state))
                start = position
            if on_page is not None and page:
                on_page(len(page))
            if len(page) < self.page_size:
                break
        for aggregate_id in with_snapshots:
            # Snapshots left of a stream whose every event was deleted; a stream
            # begun after the head is not part of this pass.
            if aggregate_id not in streams and not self._has_events_after(
                aggregate_id, 0
            ):
                streams[aggregate_id] = _Stream(
                    aggregate_id, snaps=self.prover.start(aggregate_id)
                )
        self._find_key_faults(streams, None)
        users = [self._finish(stream, in_log_order=True) for stream in streams.values()]
        return ChainReport(users=tuple(sorted(users, key=lambda u: u.user_id)))

    def one_user(self, user_id: str) -> ChainReport:
        with self.keys.reading():
            return self._one_user(user_id)

    def _one_user(self, user_id: str) -> ChainReport:
        """The user's events up to the log's safe head, in version order; their
        positions in the log must grow with their versions (the order the views
        replay), as the pass over all users checks."""
        stream_id = user_aggregate_id(user_id)
        stream = _Stream(stream_id, user_id=user_id)
        stream.snaps = self.prover.start(stream_id)
        head, position = self.head(), 0
        while True:
            page = self.backend.stream_after(
                self.recorder,
                stream_id,
                stream.version,
                head,
                self.page_size,
            )
            for stored in page:
                if stored.id <= position:
                    stream.out_of_place = stream.version
                    stream.suspect = (
                        f"version {stored.originator_version} is stored at position "
                        f"{stored.id}, before version {stream.version} (position "
                        f"{position})"
                    )
                self._step(stream, stored)
                position = stored.id
                if stream.suspect is not None:
                    break
            if stream.suspect is not None or len(page) < self.page_size:
                break
        self._find_key_faults({stream_id: stream}, [stream_id])
        return ChainReport(users=(self._finish(stream, in_log_order=True),))

    def _step(self, stream: _Stream, stored: Stored) -> None:
        stream.events += 1
        if stream.suspect is not None:
            return
        version = stored.originator_version
        if version != stream.version + 1:
            stream.suspect = f"version {version} follows version {stream.version}"
            return
        quick = quick_read(stored, self.records)
        if quick is None:
            stream.user_id = stream.user_id or named_user(stored)
        if (
            quick is None
            or quick.prev_hash != stream.last_hash
            or (
                quick.user_id != stream.user_id  # else known to own this stream
                and user_aggregate_id(quick.user_id) != stream.originator_id
            )
        ):
            exact = self._exact_link(stream, stored)
            if isinstance(exact, str):
                stream.suspect = exact
                return
            quick = exact
        stream.user_id = stream.user_id or quick.user_id
        stream.version = version
        stream.last_hash = quick.hash
        if stored.topic == UserForgotten.TOPIC:
            _note_erasure(stream, stored)
        if stream.snaps is not None:
            self.prover.step(stream.snaps, version, quick)

    def _exact_link(self, stream: _Stream, stored: Stored) -> Read | str:
        current = exact_read(stored, self.records)
        if isinstance(current, str):
            return current
        last = self._stored(stream)
        previous = GENESIS_HASH if last is None else exact_read(last, self.records)
        expected = previous.hash if isinstance(previous, Read) else previous
        if current.prev_hash != expected:
            return (
                f"version {stored.originator_version} does not link to the one before"
            )
        return current

    def _finish(self, stream: _Stream, *, in_log_order: bool) -> UserChain:
        if stream.suspect is not None:
            return self._located(stream, in_log_order=in_log_order)
        user_id = stream.user_id or f"(stream {stream.originator_id})"
        last = self._stored(stream)
        if last is None:
            return UserChain(
                user_id=user_id,
                events=0,
                head_version=0,
                head_hash=GENESIS_HASH,
                fault=self._snapshot_fault(stream)
                or self._key_faults.get(stream.originator_id),
            )
        head = exact_read(last, self.records)
        fault: ChainBreak | None
        if isinstance(head, str):
            fault = ChainBreak(version=stream.version, fault="altered", detail=head)
            head_hash = stream.last_hash
        else:
            head_hash = head.hash
            fault = (
                self._snapshot_fault(stream)
                or self._erasure_fault(stream)
                or self._key_faults.get(stream.originator_id)
            )
        return UserChain(
            user_id=user_id,
            events=stream.events,
            head_version=stream.version,
            head_hash=head_hash,
            fault=fault,
        )

    def _snapshot_fault(self, stream: _Stream) -> ChainBreak | None:
        if stream.snaps is None:
            return None
        return self.prover.after_pass(
            stream.snaps,
            stream.version,
            lambda: self._has_events_after(stream.originator_id, stream.version),
        )

    def _find_key_faults(
        self, streams: dict[UUID | str, _Stream], only: list[UUID] | None
    ) -> None:
        """Notes the key table's findings per stream; a stream that has key rows
        but no event gets a (possibly empty) chain of its own in the report."""
        retired = {
            key: (stream.version, stream.retired_below)
            for key, stream in streams.items()
            if isinstance(key, UUID)
        }
        found = key_faults(self.keys, retired, only)
        self._key_faults = dict(found.items())
        for stream_id in self._key_faults:
            if stream_id not in streams:
                streams[stream_id] = _Stream(stream_id)

    def _erasure_fault(self, stream: _Stream) -> ChainBreak | None:
        """A ``forgotten`` event whose retired keys still live: an erasure in
        progress, which the next forget_user, forget_inactive or expire_due
        finishes."""
        stream_id = as_stream_id(stream.originator_id)
        if not stream.retired_below or not isinstance(stream_id, UUID):
            return None
        live = self.keys.live_generations(stream_id, stream.retired_below)
        if not live:
            return None
        return ChainBreak(
            version=stream.forgotten_at,
            fault="erasure-pending",
            detail=f"the forgotten event of version {stream.forgotten_at} retired "
            f"key generation(s) {', '.join(map(str, live))}, which still exist: run "
            "forget_user (ctxledger forget USER) to finish the erasure",
        )

    def _located(self, stream: _Stream, *, in_log_order: bool) -> UserChain:
        """Reads a faulty stream again, in version order, to say where it breaks."""
        stored = list(self.recorder.select_events(stream.originator_id))
        links: list[Link] = []
        user_id = stream.user_id
        for event in stored:
            read = exact_read(event, self.records)
            if isinstance(read, str):
                links.append(Link(event.originator_version, None, None, read))
            else:
                user_id = user_id or read.user_id
                links.append(Link(event.originator_version, read.hash, read.prev_hash))
        fault = find_break(links, first_prev=GENESIS_HASH)
        if fault is None and in_log_order:
            # Version order holds, so the log (the order views replay) is wrong.
            fault = ChainBreak(
                version=stream.out_of_place or stream.version + 1,
                fault="reordered",
                detail=f"in the ledger's log, {stream.suspect}",
            )
        last = links[-1] if links else None
        return UserChain(
            user_id=user_id or f"(stream {stream.originator_id})",
            events=len(stored),
            head_version=last.version if last else 0,
            head_hash=(last.hash or GENESIS_HASH) if last else GENESIS_HASH,
            fault=fault,
        )

    def _stored(self, stream: _Stream) -> StoredEvent | None:
        """The stream's event at its last version read, as stored."""
        return self._stored_at(stream.originator_id, stream.version)

    def _stored_at(self, aggregate_id: UUID | str, version: int) -> StoredEvent | None:
        if version == 0:
            return None
        found = self.recorder.select_events(aggregate_id, gt=version - 1, lte=version)
        return found[0] if found else None

    def _has_events_after(self, aggregate_id: UUID | str, version: int) -> bool:
        return bool(self.recorder.select_events(aggregate_id, gt=version, limit=1))


def _note_erasure(stream: _Stream, stored: Stored) -> None:
    """Notes the key generations a ``forgotten`` event retired."""
    below = retired_below(stored.topic, stored.state)
    if below:
        stream.forgotten_at = stored.originator_version
        stream.retired_below = max(stream.retired_below, below)
