"""Finds contexts whose time to live has run out, across all users.

An index of expiry times, kept up to date by reading the ledger's own notification
log from where it last stopped. It only proposes users; each user's aggregate
decides what is actually due.
"""

from datetime import datetime, timedelta
from typing import Any

from eventsourcing.persistence import ApplicationRecorder, Mapper

from ledger.events import (
    EVENT_TOPICS,
    ContextCleared,
    ContextCreated,
    ContextExpired,
    ContextReused,
    ContextUpdated,
)

_PAGE = 1000


class DueIndex:
    """Expiry time of every context that has one, by (user, context)."""

    def __init__(self) -> None:
        self._position = 0
        self._expires: dict[tuple[str, str], datetime] = {}
        self._ttl: dict[tuple[str, str], float] = {}

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
        return sorted({user for (user, _), at in self._expires.items() if at <= now})

    def _apply(self, event: object) -> None:
        match event:
            case ContextCreated() | ContextReused():
                self._set(
                    event.user_id, event.context_id, event.ttl_seconds, event.timestamp
                )
            case ContextUpdated():
                key = (event.user_id, event.context_id)
                self._set(*key, self._ttl.get(key), event.timestamp)
            case ContextExpired() | ContextCleared():
                key = (event.user_id, event.context_id)
                self._expires.pop(key, None)
                self._ttl.pop(key, None)

    def _set(
        self, user_id: str, context_id: str, ttl: float | None, at: datetime
    ) -> None:
        key = (user_id, context_id)
        if ttl is None:
            self._expires.pop(key, None)
            self._ttl.pop(key, None)
        else:
            self._ttl[key] = ttl
            self._expires[key] = at + timedelta(seconds=ttl)
