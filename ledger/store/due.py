"""Finds contexts whose time to live has run out, across all users.

An index of expiry times, kept up to date by reading the ledger's own notification
log from where it last stopped. It only proposes users; each user's aggregate
decides what is actually due.
"""

from datetime import datetime
from typing import Any
from uuid import UUID

import msgpack
from eventsourcing.persistence import ApplicationRecorder, Mapper, StoredEvent

from ledger.domain.contexts import evolve_context
from ledger.domain.events import EVENT_TOPICS, ContextEvent
from ledger.domain.models import Context
from ledger.store.backends import safe_head

_PAGE = 1000


class DueIndex:
    """Time to live and expiry time of each context that has one, by user and id.

    Each event changes the entry as ``evolve_context`` says; a context with no
    entry has no time to live (metadata is not kept: expiry does not depend on it).
    """

    def __init__(self) -> None:
        self._position = 0
        self._due: dict[tuple[str, str], tuple[float | None, datetime]] = {}
        self.damaged: dict[UUID, tuple[str, str]] = {}
        """Streams with an event the index could not decode: the user (the stream,
        when not even the user id can be read) and why."""

    def catch_up(self, recorder: ApplicationRecorder, mapper: Mapper[Any]) -> None:
        """Reads the log from where it stopped up to its safe head, so never past
        an event that may still commit before it."""
        stop = safe_head(recorder)
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
                    event = mapper.to_domain_event(notification)
                except ValueError as error:  # MapperDeserialisationError
                    self.damaged[UUID(str(notification.originator_id))] = (
                        _user_of(notification),
                        f"event at position {notification.id} (version "
                        f"{notification.originator_version}) cannot be decoded: {error}",
                    )
                else:
                    if isinstance(event, ContextEvent):
                        self._apply(event)
                self._position = notification.id
            if len(page) < _PAGE:
                self._position = stop  # every event up to it has been read

    def users_due(self, now: datetime) -> list[str]:
        return sorted({user for (user, _), (_, at) in self._due.items() if at <= now})

    def _apply(self, event: ContextEvent) -> None:
        key = (event.user_id, event.context_id)
        after = evolve_context(self._known(key, event), event)
        if after is None or after.expires_at is None:
            self._due.pop(key, None)
        else:
            self._due[key] = (after.ttl_seconds, after.expires_at)

    def _known(self, key: tuple[str, str], event: ContextEvent) -> Context:
        """The context as far as expiry goes: its time to live and expiry."""
        ttl, expires_at = self._due.get(key, (None, None))
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


def _user_of(stored: StoredEvent) -> str:
    """The user id in an event that does not decode, if msgpack can still read it;
    else the stream's id."""
    try:
        fields = msgpack.unpackb(stored.state, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError):
        fields = None
    user = fields.get("user_id") if isinstance(fields, dict) else None
    return user if isinstance(user, str) else f"stream {stored.originator_id}"
