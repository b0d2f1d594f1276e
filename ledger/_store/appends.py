"""Appending a command's events, and settling an append whose outcome is unknown
(the connection failed while it ran) from the store: exactly once, never a guess.
"""

from typing import Any

from eventsourcing.persistence import ApplicationRecorder, IntegrityError, StoredEvent

from ledger._domain.events import ContextEvent
from ledger._store.codec import DECODE_ERRORS, unpack_state
from ledger._store.failures import storage_failures
from ledger._store.postgres_log import AppendOutcomeUnknown, LockWaitEnded
from ledger._store.shard_guard import refusal_of
from ledger._store.urls import Storage
from ledger.errors import LedgerConfigError, StorageUnavailable


class Appends:
    """The appends of one application's event store."""

    def __init__(
        self, events: Any, recorder: ApplicationRecorder, storage: Storage
    ) -> None:
        self.events = events
        self.recorder = recorder
        self.storage = storage

    def put(self, events: list[ContextEvent]) -> None:
        """Stores the events; a failure whose outcome is unknown is settled.

        Where a failed write may still be stored (PostgreSQL: the connection failed
        while the append ran, AppendOutcomeUnknown), the same events are written
        again: the unique key waits for the first try to end, then stores them once
        or refuses them (IntegrityError), and a refusal is ours if the stored
        event carries our command id. If that fails too, the outcome stays
        unknown and the error says so. Every other failure appended nothing, and a
        refusal of the first try is another writer's (IntegrityError).
        """
        try:
            with storage_failures(self.storage, writing=True):
                self.events.put(events)
        except StorageUnavailable as failure:
            if not isinstance(failure.cause, AppendOutcomeUnknown):
                raise
            try:
                with storage_failures(self.storage, writing=True):
                    self.events.put(events)
            except LockWaitEnded as waited:
                # The first try may still hold the version, uncommitted: stored
                # if it commits. Ours if it is there by now, else unknown.
                if not self.ours(events[0]):
                    raise StorageUnavailable(
                        self.storage.description, waited, writing=True, unknown=True
                    ) from failure
            except IntegrityError:
                # Another writer's events, or ours from the try whose reply was lost.
                if not self.ours(events[0]):
                    raise
            except LedgerConfigError as refused:
                # A shard's guard (the user is moving away): the first try's
                # events, if stored, are still here to be found.
                if refusal_of(refused) is None or not self.ours(events[0]):
                    raise
            except StorageUnavailable as again:
                raise StorageUnavailable(
                    self.storage.description, again.cause, writing=True, unknown=True
                ) from failure

    def taken(self, first: ContextEvent) -> bool:
        """Whether an event is stored at ``first``'s version."""
        with storage_failures(self.storage):
            return self._stored_at(first) is not None

    def ours(self, first: ContextEvent) -> bool:
        """Whether the stored event at ``first``'s version is ``first``'s call's:
        its command id is read from the stored state, nothing else is decoded."""
        if first.command_id is None:
            return False
        try:
            with storage_failures(self.storage):
                stored = self._stored_at(first)
        except StorageUnavailable as unreadable:
            raise StorageUnavailable(
                self.storage.description, unreadable.cause, writing=True, unknown=True
            ) from unreadable
        if stored is None:
            return False
        try:
            state = unpack_state(stored.state)
        except DECODE_ERRORS:
            return False  # damaged: not ours; the retry's reload reports it
        return isinstance(state, dict) and state.get("command_id") == first.command_id

    def _stored_at(self, first: ContextEvent) -> StoredEvent | None:
        version = first.originator_version
        found = self.recorder.select_events(
            first.originator_id, gt=version - 1, lte=version
        )
        return found[0] if found else None
