"""Checks the users' hash chains against the events as they are stored.

One pass reads the ledger's log in order. Each event's record is hashed without
building its pydantic models (the quick path); when a link does not hold, the
exact path (the mapper and ``ledger_record``) decides, so the quick path can only
save time, never change a verdict. A stream with a fault is then read again in
version order to say where it breaks and how (``chain.find_break``). Last, the
newest snapshot of each user is compared with the events: a snapshot newer than
the last event shows that events at the end were deleted.
"""

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

from eventsourcing.persistence import Mapper, Notification, StoredEvent

from ledger.audit.chain import (
    ChainBreak,
    ChainReport,
    Link,
    UserChain,
    find_break,
)
from ledger.domain.contexts import (
    UserContexts,
    UserSnapshot,
    project_user,
    user_aggregate_id,
)
from ledger.domain.events import (
    EVENT_CLASSES,
    CarriesMetadata,
    ContextEvent,
    UserForgotten,
)
from ledger.domain.hashing import GENESIS_HASH, metadata_commitment, record_hash
from ledger.errors import LedgerError
from ledger.store.application import LedgerApplication
from ledger.store.backends import as_stream_id, safe_head
from ledger.store.serialization import PydanticMapper

PAGE_SIZE = 10_000
KIND_BY_TOPIC = {cls.TOPIC: cls.KIND for cls in EVENT_CLASSES}
Progress = Callable[[int], None]


def json_time(at: datetime) -> str:
    """A UTC time as pydantic writes it in JSON mode (``...Z``)."""
    text = at.astimezone(UTC).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


@dataclass(frozen=True, slots=True)
class Read:
    """What the chain needs of one stored event."""

    user_id: str
    prev_hash: str
    hash: str


_ENVELOPE = frozenset(
    {"user_id", "context_id", "thread_id", "run_id", "timestamp", "prev_hash"}
)
_NOT_HASHED = frozenset({"sealed", "class_version", "format"})
"""Stored fields the chain does not cover: a sealed value (its commitment is
covered), the class version and the stored format. The key generation is
covered only where it means something (``shape_record``)."""


def quick_read(stored: StoredEvent, mapper: Mapper[UUID]) -> Read | None:
    """The event's record hashed straight from its stored state; None if that
    state is not what the quick path expects (the exact path decides then)."""
    try:
        state: dict[str, Any] = mapper.transcoder.decode(stored.state)
        details = {
            key: value
            for key, value in state.items()
            if key not in _ENVELOPE and key not in _NOT_HASHED
        }
        if (
            details.get("metadata_commitment") is None
            and stored.topic != UserForgotten.TOPIC
        ):
            details.pop("key_generation", None)
        if "expires_at" in details:
            details["expires_at"] = json_time(details["expires_at"])
        if any(isinstance(value, datetime) for value in details.values()):
            return None  # a time where the model has none: the exact path decides
        record = {
            "user_id": state["user_id"],
            "kind": KIND_BY_TOPIC[stored.topic],
            "context_id": state["context_id"],
            "thread_id": state["thread_id"],
            "run_id": state["run_id"],
            "occurred_at": json_time(state["timestamp"]),
            "version": stored.originator_version,
            "prev_hash": state["prev_hash"],
            "details": details,
        }
        if "sealed" in state or state.get("metadata_commitment") is not None:
            # The chain covers the commitment; the sealed value must open to it.
            cast(PydanticMapper, mapper).check_sealed(stored, state)
        return Read(state["user_id"], state["prev_hash"], record_hash(record))
    except LedgerError:
        raise  # a master key that does not open the keys: a setting, not damage
    except Exception:  # noqa: BLE001  (anything odd goes to the exact path)
        return None


def exact_read(stored: StoredEvent, mapper: Mapper[UUID]) -> Read | str:
    """The event decoded as the ledger decodes it; a description if it cannot be."""
    try:
        event = mapper.to_domain_event(stored)
    except LedgerError:
        raise
    except Exception as error:  # noqa: BLE001  (any decoding failure is a finding)
        return f"it cannot be decoded: {' '.join(str(error).split())[:300]}"
    if not isinstance(event, ContextEvent):
        return f"its topic {stored.topic!r} is not an event of a context"
    if user_aggregate_id(event.user_id) != as_stream_id(stored.originator_id):
        return f"it names user {event.user_id!r}, who owns another stream"
    if not _commitment_holds(event):
        return "its metadata is not what its metadata_commitment was made of"
    return Read(event.user_id, event.prev_hash, record_hash(event.chain_record()))


def _commitment_holds(event: ContextEvent) -> bool:
    """Whether the event's shown metadata is what its commitment was made of (the
    chain covers the commitment, so this ties the metadata to the chain)."""
    if not isinstance(event, CarriesMetadata) or event.metadata_commitment is None:
        return True
    if event.metadata is None:
        return event.metadata_salt is None  # erased: nothing to open
    try:
        return isinstance(event.metadata_salt, str) and (
            metadata_commitment(event.metadata_salt, event.metadata)
            == event.metadata_commitment
        )
    except (ValueError, TypeError):
        return False


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


class ChainVerifier:
    """Recomputes the hash chains of the events stored by one application."""

    def __init__(self, app: LedgerApplication, page_size: int = PAGE_SIZE) -> None:
        self.recorder = app.recorder
        self.mapper = app.mapper
        self.snapshots = app.snapshots
        self.backend = app.backend
        self.keys = app.keys
        self.page_size = page_size

    def head(self) -> int:
        """The log's safe head: the last position ``all_users`` reads now."""
        return safe_head(self.recorder)

    def all_users(self, on_page: Progress | None = None) -> ChainReport:
        """Every stream in the log up to its safe head when the pass begins (an
        event committed later is left to the next pass, never half-seen)."""
        with self.keys.reading():  # each user's key looked up once a pass
            return self._all_users(on_page)

    def _all_users(self, on_page: Progress | None) -> ChainReport:
        streams: dict[UUID | str, _Stream] = {}
        start, head = 0, self.head()
        while True:
            page: Iterable[Notification] = self.recorder.select_notifications(
                start=start, limit=self.page_size, stop=head, inclusive_of_start=False
            )
            count = 0
            for notification in page:
                aggregate_id = as_stream_id(notification.originator_id)
                stream = streams.get(aggregate_id)
                if stream is None:
                    stream = streams[aggregate_id] = _Stream(aggregate_id)
                self._step(stream, notification)
                start = notification.id
                count += 1
            if on_page is not None and count:
                on_page(count)
            if count < self.page_size:
                break
        for aggregate_id in self._snapshot_streams():
            # Snapshots left of a stream whose every event was deleted; a stream
            # begun after the head is not part of this pass.
            if aggregate_id not in streams and not self._has_events_after(
                aggregate_id, 0
            ):
                streams[aggregate_id] = _Stream(aggregate_id)
        users = [self._finish(stream, in_log_order=True) for stream in streams.values()]
        return ChainReport(users=tuple(sorted(users, key=lambda u: u.user_id)))

    def one_user(self, user_id: str) -> ChainReport:
        with self.keys.reading():
            return self._one_user(user_id)

    def _one_user(self, user_id: str) -> ChainReport:
        stream = _Stream(user_aggregate_id(user_id), user_id=user_id)
        while True:
            page = self.recorder.select_events(
                stream.originator_id, gt=stream.version or None, limit=self.page_size
            )
            for stored in page:
                self._step(stream, stored)
                if stream.suspect is not None:
                    break
            if stream.suspect is not None or len(page) < self.page_size:
                break
        return ChainReport(users=(self._finish(stream, in_log_order=False),))

    def _step(self, stream: _Stream, stored: StoredEvent) -> None:
        stream.events += 1
        if stream.suspect is not None:
            return
        version = stored.originator_version
        if version != stream.version + 1:
            stream.suspect = f"version {version} follows version {stream.version}"
            return
        quick = quick_read(stored, self.mapper)
        if (
            quick is None
            or quick.prev_hash != stream.last_hash
            or user_aggregate_id(quick.user_id) != stream.originator_id
        ):
            exact = self._exact_link(stream, stored)
            if isinstance(exact, str):
                stream.suspect = exact
                return
            quick = exact
        stream.user_id = stream.user_id or quick.user_id
        stream.version = version
        stream.last_hash = quick.hash

    def _exact_link(self, stream: _Stream, stored: StoredEvent) -> Read | str:
        current = exact_read(stored, self.mapper)
        if isinstance(current, str):
            return current
        last = self._stored(stream)
        previous = GENESIS_HASH if last is None else exact_read(last, self.mapper)
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
                fault=self._snapshot_fault(stream.originator_id, 0, GENESIS_HASH),
            )
        head = exact_read(last, self.mapper)
        fault: ChainBreak | None
        if isinstance(head, str):
            fault = ChainBreak(version=stream.version, fault="altered", detail=head)
            head_hash = stream.last_hash
        else:
            head_hash = head.hash
            fault = self._snapshot_fault(
                stream.originator_id, stream.version, head_hash
            )
        return UserChain(
            user_id=user_id,
            events=stream.events,
            head_version=stream.version,
            head_hash=head_hash,
            fault=fault,
        )

    def _located(self, stream: _Stream, *, in_log_order: bool) -> UserChain:
        """Reads a faulty stream again, in version order, to say where it breaks."""
        stored = list(self.recorder.select_events(stream.originator_id))
        links: list[Link] = []
        user_id = stream.user_id
        for event in stored:
            read = exact_read(event, self.mapper)
            if isinstance(read, str):
                links.append(Link(event.originator_version, None, None, read))
            else:
                user_id = user_id or read.user_id
                links.append(Link(event.originator_version, read.hash, read.prev_hash))
        fault = find_break(links, first_prev=GENESIS_HASH)
        if fault is None and in_log_order:
            # Version order holds, so the log (the order views replay) is wrong.
            fault = ChainBreak(
                version=stream.version + 1,
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
        if stream.version == 0:
            return None
        found = self.recorder.select_events(
            stream.originator_id, gt=stream.version - 1, lte=stream.version
        )
        return found[0] if found else None

    def _has_events_after(self, aggregate_id: UUID | str, version: int) -> bool:
        return bool(self.recorder.select_events(aggregate_id, gt=version, limit=1))

    def _snapshot_streams(self) -> list[UUID | str]:
        if self.snapshots is None:
            return []
        return self.backend.snapshot_streams(self.snapshots.recorder)

    def _snapshot_fault(
        self, aggregate_id: UUID | str, head_version: int, head_hash: str
    ) -> ChainBreak | None:
        """Every snapshot must be what a replay of the events gives at its version.

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
            return ChainBreak(
                version=head_version + 1,
                fault="missing",
                detail=f"a snapshot of version {newest} exists, but the last event "
                f"is version {head_version}: the events after it were deleted",
            )
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
