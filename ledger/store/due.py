"""Finds contexts whose time to live has run out, across all users.

An index of expiry times, kept up to date by reading the ledger's own notification
log from where it last stopped. It only proposes users; each user's aggregate
decides what is actually due.
"""

from datetime import datetime
from typing import Any

from eventsourcing.persistence import ApplicationRecorder, Mapper

from ledger.domain.contexts import expiry_time
from ledger.domain.events import (
    EVENT_TOPICS,
    ContextCleared,
    ContextCreated,
    ContextEvent,
    ContextExpired,
    ContextReused,
    ContextUpdated,
)

_PAGE = 1000


class DueIndex:
    """Time to live and expiry time of each context that has one, by user and id."""

    def __init__(self) -> None:
        self._position = 0
        self._due: dict[tuple[str, str], tuple[float, datetime]] = {}

    def catch_up(self, recorder: ApplicationRecorder, mapper: Mapper[Any]) -> None:
        while True:
            page = recorder.select_notifications(
                start=self._position,
                limit=_PAGE,
                topics=EVENT_TOPICS,
                inclusive_of_start=False,
            )
            for notification in page:
                self._apply(mapper.to_domain_event(notification))
                self._position = notification.id
            if len(page) < _PAGE:
                return

    def users_due(self, now: datetime) -> list[str]:
        return sorted({user for (user, _), (_, at) in self._due.items() if at <= now})

    def _apply(self, event: object) -> None:
        match event:
            case ContextCreated() | ContextReused():
                self._set(event, event.ttl_seconds)
            case ContextUpdated():
                known = self._due.get((event.user_id, event.context_id))
                self._set(event, None if known is None else known[0])
            case ContextExpired() | ContextCleared():
                self._due.pop((event.user_id, event.context_id), None)

    def _set(self, event: ContextEvent, ttl: float | None) -> None:
        key = (event.user_id, event.context_id)
        expires_at = expiry_time(event.timestamp, ttl)
        if ttl is None or expires_at is None:  # None together: no expiry
            self._due.pop(key, None)
        else:
            self._due[key] = (ttl, expires_at)
