"""Finds contexts whose time to live has run out, across all users.

An index of expiry times, kept up to date by reading the ledger's own notification
log from where it last stopped. It only proposes users; each user's aggregate
decides what is actually due.
"""

import struct
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import msgpack
from eventsourcing.persistence import ApplicationRecorder, Mapper, StoredEvent

from ledger._domain.contexts import evolve_context, forgets_user
from ledger._domain.events import EVENT_TOPICS, ContextEvent
from ledger._domain.models import Context
from ledger._store.backends import safe_head
from ledger._store.serialization import PydanticMapper
from ledger.errors import LedgerError

_PAGE = 1000


_RECORD = struct.Struct("<qd")
"""A context's entry: its expiry (microseconds since 1970, UTC) and time to live
in seconds; 16 bytes."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


class DueIndex:
    """Time to live and expiry time of each context that has one, by user and id.

    Each event changes the entry as ``evolve_context`` says; a context with no
    entry has no time to live (metadata is not kept: expiry does not depend on it).
    An entry is a small fixed-size record (about 180 bytes with its key), so the
    index of a large ledger stays small: each user id is kept once, numbered.
    """

    def __init__(self) -> None:
        self._position = 0
        self._due: dict[str, bytes] = {}  # "user number/context id" -> _RECORD
        self._numbers: dict[str, int] = {}
        self._users: list[str] = []
        self._forgotten: set[int] = set()  # users whose entries are to go
        self.damaged: dict[UUID, tuple[str, str]] = {}
        """Streams with an event the index could not decode: the user (the stream,
        when not even the user id can be read) and why."""

    def catch_up(self, recorder: ApplicationRecorder, mapper: Mapper[Any]) -> None:
        """Reads the log from where it stopped up to its safe head, so never past
        an event that may still commit before it."""
        stop = safe_head(recorder)
        self._read(recorder, mapper, stop)
        self._flush()

    def _read(
        self, recorder: ApplicationRecorder, mapper: Mapper[Any], stop: int
    ) -> None:
        while self._position < stop:
            page = recorder.select_notifications(
                start=self._position,
                limit=_PAGE,
                stop=stop,
                topics=EVENT_TOPICS,
                inclusive_of_start=False,
            )
            for notification in page:
                try:
                    event = _decoded(mapper, notification)
                except LedgerError:
                    raise  # a master key that does not open the keys: a setting
                except ValueError as error:  # MapperDeserialisationError
                    self.damaged[UUID(str(notification.originator_id))] = (
                        _user_of(notification),
                        f"event at position {notification.id} (version "
                        f"{notification.originator_version}) cannot be decoded: "
                        f"{error}",
                    )
                else:
                    if isinstance(event, ContextEvent):
                        self._apply(event)
                self._position = notification.id
            self._flush()
            if len(page) < _PAGE:
                self._position = stop  # every event up to it has been read

    def users_due(self, now: datetime) -> list[str]:
        limit = (now - _EPOCH) // _MICROSECOND
        numbers = {
            key.partition("/")[0]
            for key, record in self._due.items()
            if _RECORD.unpack(record)[0] <= limit
        }
        return sorted(self._users[int(number)] for number in numbers)

    def _apply(self, event: ContextEvent) -> None:
        number = self._number(event.user_id)
        if forgets_user(event):  # it ended all of the user's contexts
            self._forgotten.add(number)
            return
        if number in self._forgotten:
            self._flush()  # its contexts before the erasure go first
        key = f"{number}/{event.context_id}"
        after = evolve_context(self._known(key, event), event)
        if after is None or after.expires_at is None or after.ttl_seconds is None:
            self._due.pop(key, None)
        else:
            micros = (after.expires_at - _EPOCH) // _MICROSECOND
            self._due[key] = _RECORD.pack(micros, after.ttl_seconds)

    def _flush(self) -> None:
        """Drops the entries of the users forgotten since the last flush: one
        pass over the index for all of them, not one per erasure."""
        if not self._forgotten:
            return
        gone = {str(number) for number in self._forgotten}
        self._due = {
            key: record
            for key, record in self._due.items()
            if key.partition("/")[0] not in gone
        }
        self._forgotten.clear()

    def _number(self, user_id: str) -> int:
        number = self._numbers.get(user_id)
        if number is None:
            number = self._numbers[user_id] = len(self._users)
            self._users.append(user_id)
        return number

    def _known(self, key: str, event: ContextEvent) -> Context:
        """The context as far as expiry goes: its time to live and expiry."""
        record = self._due.get(key)
        ttl: float | None = None
        expires_at: datetime | None = None
        if record is not None:
            micros, ttl = _RECORD.unpack(record)
            expires_at = _EPOCH + micros * _MICROSECOND
        return Context.model_construct(
            context_id=event.context_id,
            user_id=event.user_id,
            thread_id=event.thread_id,
            run_id=event.run_id,
            metadata={},
            created_at=event.timestamp,
            last_used_at=event.timestamp,
            expires_at=expires_at,
            ttl_seconds=ttl,
            reuse_count=0,
        )


def _decoded(mapper: Mapper[Any], notification: StoredEvent) -> object:
    """The event without opening its sealed metadata (the index needs none)."""
    if isinstance(mapper, PydanticMapper):
        return mapper.to_domain_event(notification, opened=False)
    return mapper.to_domain_event(notification)


def _user_of(stored: StoredEvent) -> str:
    """The user id in an event that does not decode, if msgpack can still read it;
    else the stream's id."""
    try:
        fields = msgpack.unpackb(stored.state, strict_map_key=False)
    except Exception:  # noqa: BLE001  (any bytes at all: an unhashable key too)
        fields = None
    user = fields.get("user_id") if isinstance(fields, dict) else None
    return user if isinstance(user, str) else f"stream {stored.originator_id}"
