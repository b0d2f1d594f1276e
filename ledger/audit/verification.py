"""Checks the users' hash chains against the events as they are stored.

One pass reads the ledger's log in order. Each event is decoded by the readers'
own decoder (``records.quick_read``, ``records.exact_read``), so an event that
every read of its user refuses is a finding here, and an event that passes here
is one the reads accept. A stream with a fault is then read again in version
order to say where it breaks and how (``chain.find_break``).

Every snapshot is checked too. One of format 3 is authenticated by its sealed
value (``PydanticMapper.authentic_snapshot``), so it holds when its ``last_hash``,
time and user are those of the event at its version: the pass notes them
(a ``Witness``) for the next few snapshot versions of each stream, listed a batch
at a time, so a stream costs a small fixed record. An older snapshot, or one whose
key was destroyed, is compared with a replay of the events. A snapshot newer than
the last event shows that events at the end were deleted.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, cast
from uuid import UUID

from eventsourcing.persistence import StoredEvent

from ledger.audit.chain import (
    ChainBreak,
    ChainReport,
    Link,
    UserChain,
    find_break,
)
from ledger.audit.key_findings import key_faults
from ledger.domain.contexts import (
    UserContexts,
    UserSnapshot,
    project_user,
    user_aggregate_id,
)
from ledger.domain.events import (
    ContextEvent,
    UserForgotten,
)
from ledger.domain.hashing import GENESIS_HASH
from ledger.errors import LedgerError
from ledger.store.application import LedgerApplication
from ledger.store.backends import as_stream_id, safe_head
from ledger.store.chain_reads import Read, Stored, exact_read, named_user, quick_read
from ledger.store.codec import unpack_state
from ledger.store.serialization import (
    Opener,
    PydanticMapper,
)

PAGE_SIZE = 10_000
SNAPSHOT_BATCH = 16
"""How many snapshot versions of a stream the pass looks out for at a time: a
stream keeps at most this many versions and witnesses (a few kB), and costs two
reads of its snapshots per this many."""
Progress = Callable[[int], None]


class _Row(NamedTuple):
    """A row of the log as the pass reads it (``Backend.log_rows``), with the
    stream id made once per stream, not once per event."""

    originator_id: UUID | str
    originator_version: int
    topic: str
    state: bytes


class Witness(NamedTuple):
    """What a snapshot at ``version`` must agree with: its event, as the chain
    read it."""

    version: int
    hash: str
    timestamp: datetime
    user_id: str


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
    awaited: list[int] = field(default_factory=list)
    """The next snapshot versions (at most SNAPSHOT_BATCH), for which the pass
    keeps a witness."""
    listed: int = 0
    """The snapshots up to this version have been listed."""
    witnesses: list[Witness] = field(default_factory=list)
    """Witnesses of the awaited snapshots that were reached, not yet checked."""
    snapshot_fault: ChainBreak | None = None
    """The first snapshot found altered."""
    replay_up_to: int = 0
    """The newest snapshot that only a replay of the events can check."""
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
        self.mapper = app.mapper
        self.records = app.records
        self.snapshots = app.snapshots
        self.backend = app.backend
        self.keys = app.keys
        self.page_size = page_size
        self._key_faults: dict[UUID | str, ChainBreak] = {}
        self._openers: dict[tuple[UUID, int], Opener] = {}
        """Keys met in the pass (one per user and key generation), as the key
        store's ``reading()`` scope keeps them."""

    def head(self) -> int:
        """The log's safe head: the last position ``all_users`` reads now."""
        return safe_head(self.recorder)

    def all_users(self, on_page: Progress | None = None) -> ChainReport:
        """Every stream in the log up to its safe head when the pass begins (an
        event committed later is left to the next pass, never half-seen)."""
        with self.keys.reading():  # each user's key looked up once a pass
            try:
                return self._all_users(on_page)
            finally:
                self._openers.clear()

    def _all_users(self, on_page: Progress | None) -> ChainReport:
        streams: dict[UUID | str, _Stream] = {}
        by_stored_id: dict[object, _Stream] = {}  # as the backend gives the id
        with_snapshots = set(self._snapshot_streams())
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
                            self._await_snapshots(stream)
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
                streams[aggregate_id] = _Stream(aggregate_id)
        self._find_key_faults(streams, None)
        users = [self._finish(stream, in_log_order=True) for stream in streams.values()]
        return ChainReport(users=tuple(sorted(users, key=lambda u: u.user_id)))

    def one_user(self, user_id: str) -> ChainReport:
        with self.keys.reading():
            try:
                return self._one_user(user_id)
            finally:
                self._openers.clear()

    def _one_user(self, user_id: str) -> ChainReport:
        """The user's events up to the log's safe head, in version order; their
        positions in the log must grow with their versions (the order the views
        replay), as the pass over all users checks."""
        stream_id = user_aggregate_id(user_id)
        stream = _Stream(stream_id, user_id=user_id)
        self._await_snapshots(stream)
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
        if stream.awaited and stream.awaited[0] == version:
            del stream.awaited[0]
            stream.witnesses.append(
                Witness(version, quick.hash, quick.timestamp, quick.user_id)
            )
            if not stream.awaited:
                self._check_witnessed(stream)
                self._await_snapshots(stream)

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
                fault=self._snapshot_fault(stream.originator_id, 0, GENESIS_HASH)
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
                self._snapshots_after_pass(stream)
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

    def _snapshot_streams(self) -> list[UUID | str]:
        if self.snapshots is None:
            return []
        return self.backend.snapshot_streams(self.snapshots.recorder)

    # Snapshots: checked against witnesses the pass keeps, a batch at a time.

    def _stored_snapshots(
        self, stream: _Stream, after: int, *, up_to: int | None = None
    ) -> list[StoredEvent]:
        if self.snapshots is None:
            return []
        return list(
            self.snapshots.recorder.select_events(
                stream.originator_id,
                gt=after,
                lte=up_to,
                limit=None if up_to is not None else SNAPSHOT_BATCH,
            )
        )

    def _await_snapshots(self, stream: _Stream) -> None:
        """Lists the stream's next snapshot versions for the pass to witness; a
        snapshot at a version the pass has left behind (stored while the pass
        ran) is checked against its event, read again."""
        while not stream.awaited:
            listed = self._stored_snapshots(stream, stream.listed)
            for snapshot in listed:
                if snapshot.originator_version > stream.version:
                    stream.awaited.append(snapshot.originator_version)
                else:
                    self._check_snapshot(stream, snapshot, None)
            if listed:
                stream.listed = listed[-1].originator_version
            if len(listed) < SNAPSHOT_BATCH:
                return

    def _check_witnessed(self, stream: _Stream) -> None:
        if not stream.witnesses:
            return
        witnesses = {w.version: w for w in stream.witnesses}
        stream.witnesses.clear()
        first, last = min(witnesses), max(witnesses)
        for snapshot in self._stored_snapshots(stream, first - 1, up_to=last):
            witness = witnesses.get(snapshot.originator_version)
            self._check_snapshot(stream, snapshot, witness)

    def _check_snapshot(
        self, stream: _Stream, snapshot: StoredEvent, witness: Witness | None
    ) -> None:
        """Checks one snapshot at or below the stream's version; ``witness`` is
        None when the pass did not keep one (its event is read again)."""
        version = snapshot.originator_version
        if (
            stream.snapshot_fault is not None
            and stream.snapshot_fault.version < version
        ):
            return
        try:
            state = cast(PydanticMapper, self.mapper).authentic_snapshot(snapshot)
        except LedgerError:
            raise
        except Exception:  # noqa: BLE001  (any failure to open it is a finding)
            problem: str | None = (
                f"the snapshot of version {version} does not open: it was altered"
            )
        else:
            # A snapshot is never evidence: whether or not it authenticates, it
            # must equal the fold of the events up to its version (a key kept in
            # the same database lets anyone with SQL access reseal one).
            stream.replay_up_to = max(stream.replay_up_to, version)
            if state is None:
                return
            problem = _stored_snapshot_problem(
                state, version, witness or self._witness(stream, version)
            )
        if problem is not None:
            stream.snapshot_fault = ChainBreak(
                version=version, fault="altered", detail=problem
            )

    def _witness(self, stream: _Stream, version: int) -> Witness | None:
        stored = self._stored_at(stream.originator_id, version)
        read = None if stored is None else quick_read(stored, self.records)
        if read is None and stored is not None:
            exact = exact_read(stored, self.records)
            read = exact if isinstance(exact, Read) else None
        return (
            None
            if read is None
            else Witness(version, read.hash, read.timestamp, read.user_id)
        )

    def _snapshots_after_pass(self, stream: _Stream) -> ChainBreak | None:
        """The stream's first snapshot fault once the pass read it to its end:
        a snapshot newer than the last event (unless events were appended since
        the pass read the log), else the first snapshot found altered."""
        self._check_witnessed(stream)
        newer = max(stream.awaited, default=0)  # listed, never reached
        stream.awaited.clear()
        while True:
            listed = self._stored_snapshots(stream, stream.listed)
            for snapshot in listed:
                if snapshot.originator_version > stream.version:
                    newer = snapshot.originator_version
                else:  # stored while the pass ran
                    self._check_snapshot(stream, snapshot, None)
            if listed:
                stream.listed = listed[-1].originator_version
            if len(listed) < SNAPSHOT_BATCH:
                break
        if newer and not self._has_events_after(stream.originator_id, stream.version):
            return _missing(stream.version, newer)
        faults = [stream.snapshot_fault] if stream.snapshot_fault else []
        if stream.replay_up_to:
            replayed = self._snapshot_fault(
                stream.originator_id, stream.replay_up_to, stream.last_hash
            )
            faults += [replayed] if replayed else []
        return min(faults, key=lambda f: f.version, default=None)

    def _snapshot_fault(
        self, aggregate_id: UUID | str, head_version: int, head_hash: str
    ) -> ChainBreak | None:
        """Every snapshot up to ``head_version`` must be what a replay of the
        events gives at its version (for snapshots that cannot be authenticated).

        The chain vouches for the events; a snapshot is checked against them, so
        one that was edited (its contents, time or hash) is found, and a snapshot
        newer than the last event shows that the events after it were deleted,
        unless they were appended after the pass read the log (they are stored).
        """
        stored = (
            list(self.snapshots.recorder.select_events(aggregate_id))
            if self.snapshots is not None
            else []
        )
        if (
            stored
            and stored[-1].originator_version > head_version
            and self._has_events_after(aggregate_id, head_version)
        ):
            stored = [s for s in stored if s.originator_version <= head_version]
        if not stored:
            return None
        with self.keys.reading():  # one lookup of the user's key for the replay
            return self._snapshots_fault(aggregate_id, stored, head_version)

    def _snapshots_fault(
        self, aggregate_id: UUID | str, stored: list[StoredEvent], head_version: int
    ) -> ChainBreak | None:
        newest = stored[-1].originator_version
        if newest > head_version:
            return _missing(head_version, newest)
        # Decoded one at a time as the replay reaches it, to keep memory flat.
        snapshots = {snapshot.originator_version: snapshot for snapshot in stored}
        replayed: UserContexts | None = None
        try:
            for event in self._replay(aggregate_id, newest):
                replayed = project_user(replayed, (event,))
                version = event.originator_version
                if version in snapshots and replayed is not None:
                    decoded = self._decoded_snapshot(snapshots.pop(version))
                    problem = _snapshot_problem(decoded, replayed)
                    if problem is not None:
                        return ChainBreak(
                            version=version, fault="altered", detail=problem
                        )
        except (ValueError, KeyError) as error:  # decoding or replay
            return ChainBreak(
                version=replayed.version + 1 if replayed else 1,
                fault="altered",
                detail=f"the events cannot be replayed: {error}",
            )
        return None

    def _decoded_snapshot(self, stored: StoredEvent) -> UserSnapshot | None:
        try:
            decoded = self.mapper.to_domain_event(stored)
        except Exception:  # noqa: BLE001  (any decoding failure is a finding)
            return None
        return decoded if isinstance(decoded, UserSnapshot) else None

    def _replay(self, aggregate_id: UUID | str, up_to: int) -> Iterator[ContextEvent]:
        """The stream's events up to ``up_to``, decoded, a page at a time."""
        after = 0
        while after < up_to:
            page = self.recorder.select_events(
                aggregate_id, gt=after, lte=up_to, limit=self.page_size
            )
            if not page:
                return
            for stored in page:
                event = self.mapper.to_domain_event(stored)
                if isinstance(event, ContextEvent):
                    yield event
            after = page[-1].originator_version


def _note_erasure(stream: _Stream, stored: Stored) -> None:
    """Notes the key generations a ``forgotten`` event retired (those below the
    one after its own; a generation of another type is the codec's finding)."""
    try:
        generation = unpack_state(stored.state).get("key_generation", 0)
    except (ValueError, TypeError, KeyError, OverflowError, AttributeError):
        return  # damaged: the chain's own checks report it
    if type(generation) is int:
        stream.forgotten_at = stored.originator_version
        stream.retired_below = max(stream.retired_below, generation + 1)


def _missing(head_version: int, newest: int) -> ChainBreak:
    return ChainBreak(
        version=head_version + 1,
        fault="missing",
        detail=f"a snapshot of version {newest} exists, but the last event "
        f"is version {head_version}: the events after it were deleted",
    )


def _stored_snapshot_problem(
    state: dict[str, Any], version: int, witness: Witness | None
) -> str | None:
    """What is wrong with an authenticated snapshot (its fields are as the ledger
    took them) against the event at its version, as the chain read it."""
    if witness is None:
        return f"the event of the snapshot of version {version} cannot be read"
    if state.get("last_hash") != witness.hash:
        return (
            f"the hash in the snapshot of version {version} is not the hash of "
            "that event"
        )
    if state.get("timestamp") != witness.timestamp or (
        state.get("user_id") != witness.user_id
    ):
        return (
            f"the snapshot of version {version} differs from the event of that "
            "version: the snapshot was altered"
        )
    return None


def _snapshot_problem(
    snapshot: UserSnapshot | None, replayed: UserContexts
) -> str | None:
    version = replayed.version
    if snapshot is None:
        return f"the snapshot of version {version} cannot be decoded"
    if snapshot.last_hash != replayed.last_hash:
        return (
            f"the hash in the snapshot of version {version} is not the hash of "
            "that event"
        )
    if (
        snapshot.timestamp != replayed.modified_on
        or snapshot.user_id != replayed.user_id
        or {c.context_id: c for c in snapshot.contexts} != replayed.contexts
        or snapshot.requests != UserSnapshot.take(replayed).requests
        or snapshot.key_generation != replayed.key_generation
        or snapshot.forgotten_at != replayed.forgotten_at
    ):
        return (
            f"the snapshot of version {version} differs from a replay of the events "
            "up to it: the snapshot was altered"
        )
    return None
