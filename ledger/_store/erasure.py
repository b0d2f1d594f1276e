"""Erasure and retention: destroying the data keys a ``forgotten`` event retires,
finishing erasures that were interrupted, and finding inactive users.

An erasure appends the user's ``forgotten`` event, then destroys the keys of the
generations it retires (and the user's snapshots, a cache that may hold metadata).
A mark is written before the append (``ledger._store.erasure_marks``), so an
erasure cut short between the two writes (kill -9, a full disk, a lost
connection) is finished by the next ``settle``: when a ledger opens, and by
``forget_user``, ``forget_inactive`` and ``expire_due``. Erasures left pending by
a release without marks are found in the log: retention lists them and
``verify_chain`` reports them.
"""

import logging
from datetime import datetime
from uuid import UUID

from ledger._domain.contexts import user_aggregate_id
from ledger._domain.events import EVENT_TOPICS, UserForgotten
from ledger._store.application import MAX_PAGE, LedgerApplication
from ledger._store.backends import safe_head
from ledger._store.codec import DECODE_ERRORS, unpack_state
from ledger._store.failures import storage_failures

_log = logging.getLogger(__name__)
LastEvents = dict[str, tuple[datetime, int]]
"""Per user, the time of the last event and, if it is a ``forgotten`` event, the
key generations it retired (``retired_below``; 0 for any other event)."""


class Erasure:
    """The erasures of one ledger's users."""

    def __init__(self, app: LedgerApplication, *, create: bool) -> None:
        self.app = app
        self.marks = app.backend.erasure_marks(getattr(app.recorder, "datastore", None))
        if create:
            self.marks.create_table()
        # A write that meets a key row the master key does not vouch for replaces
        # it only if nothing stored is sealed under it (``KeyStore.for_writing``).
        app.keys.sealed_under = self._sealed_under

    def _sealed_under(self, stream: UUID, generation: int) -> bool:
        return self._sealed_events(stream, {generation})[0] > 0

    def begin(self, user_id: str, below: int, version: int) -> None:
        """Marks the user's erasure of the key generations below ``below`` as in
        progress; called before its ``forgotten`` event is appended at
        ``version``."""
        with storage_failures(self.app.storage, writing=True):
            self.marks.add(user_aggregate_id(user_id), user_id, below, version)

    def finish(self, user_id: str, below: int) -> int:
        """Destroys the user's keys below ``below`` and the user's snapshots, then
        removes the marks it finishes; how many events' personal data that
        erased."""
        erased = self.destroy_keys(user_id, below)
        with storage_failures(self.app.storage):
            self.marks.remove(user_aggregate_id(user_id), below)
        return erased

    def settle(self) -> dict[str, int]:
        """Settles every marked erasure by the event stored at its version (no
        replay, so a user whose events do not decode is settled too): finished
        when it is the ``forgotten`` event, dropped when another event took the
        version, left while the version is free (the append failed, or another
        process has not made it yet). How many events each finished one erased."""
        with storage_failures(self.app.storage):
            marks = self.marks.all()
        finished: dict[str, int] = {}
        for user_id, below, version in marks:
            stream = user_aggregate_id(user_id)
            with storage_failures(self.app.storage):
                found = self.app.recorder.select_events(
                    stream, gt=version - 1, lte=version
                )
            if not found:
                continue
            if retired_below(found[0].topic, found[0].state) == below:
                erased = self.finish(user_id, below)
                finished[user_id] = finished.get(user_id, 0) + erased
            else:
                with storage_failures(self.app.storage):
                    self.marks.drop(stream, below)
        return finished

    def destroy_keys(self, user_id: str, below: int) -> int:
        """Destroys the user's data keys of generations before ``below`` (and the
        user's snapshots) and returns how many events' personal data those keys
        still opened, now erased. The events are counted from their stored form
        without opening anything, so a damaged event does not stop the erasure."""
        app = self.app
        stream = user_aggregate_id(user_id)
        # Not "writing": its failure must not read as "appended nothing", since
        # the forgotten event may be stored by then.
        with storage_failures(app.storage):
            live = set(app.keys.live_generations(stream, below))
            sealed, plain = self._sealed_events(stream, live)
            app.keys.destroy(stream, below)
            app.backend.delete_snapshots(app.snapshots, stream)
        app.cache.drop(stream)  # this process's cached state holds the metadata
        if plain:
            _log.warning(
                "user %r: %d event(s) written before sealing (format 1) keep their "
                "metadata in plain form; the chain covers it, so it cannot be erased",
                user_id,
                plain,
            )
        return sealed

    def destroy_all_keys(self, user_id: str) -> int:
        """Destroys every data key of the user (whose events do not replay, so its
        current generation is unknown); returns the events erased."""
        stream = user_aggregate_id(user_id)
        with storage_failures(self.app.storage):
            newest = max(self.app.keys.live_generations(stream, 2**62), default=-1)
        return self.finish(user_id, newest + 1)

    def _sealed_events(self, stream: UUID, generations: set[int]) -> tuple[int, int]:
        """How many of the stream's stored events are sealed under one of
        ``generations``, and how many hold metadata in plain form (format 1)."""
        sealed = plain = version = 0
        while True:
            page = self.app.recorder.select_events(stream, gt=version, limit=MAX_PAGE)
            for stored in page:
                try:
                    state = unpack_state(stored.state)
                except DECODE_ERRORS:
                    continue  # damaged: nothing of it can be read anyway
                if not isinstance(state, dict):
                    continue
                generation = state.get("key_generation", 0)
                if "sealed" in state:
                    sealed += type(generation) is int and generation in generations
                elif state.get("metadata"):
                    plain += 1
            if len(page) < MAX_PAGE:
                return sealed, plain
            version = page[-1].originator_version

    def inactive_users(self, since: datetime) -> list[str]:
        """The users whose last event is before ``since`` and is not their
        erasure, and the users whose erasure is still in progress (their last
        event is ``forgotten`` and a key it retired lives): retention never
        skips one. Read from the log: user ids and times only, nothing opened."""
        last = self._last_events()
        inactive = [
            user
            for user, (at, below) in last.items()
            if (not below and at < since) or (below and self._pending(user, below))
        ]
        return sorted(inactive)

    def _pending(self, user_id: str, below: int) -> bool:
        stream = user_aggregate_id(user_id)
        with storage_failures(self.app.storage):
            return bool(self.app.keys.live_generations(stream, below))

    def _last_events(self) -> LastEvents:
        app = self.app
        reader = app.log_reader
        last: LastEvents = {}
        position, stop = 0, safe_head(reader)
        with storage_failures(app.storage):
            while position < stop:
                page = reader.select_notifications(
                    start=position,
                    limit=MAX_PAGE,
                    stop=stop,
                    topics=EVENT_TOPICS,
                    inclusive_of_start=False,
                )
                for notification in page:
                    _note(last, notification.topic, notification.state)
                if len(page) < MAX_PAGE:
                    break
                position = page[-1].id
        return last


def _note(last: LastEvents, topic: str, data: bytes) -> None:
    try:
        state = unpack_state(data)
        user, at = state["user_id"], state["timestamp"]
    except DECODE_ERRORS:
        return  # undecodable: verify_chain reports it
    if isinstance(user, str) and isinstance(at, datetime):
        last[user] = (at, retired_below(topic, data))


def retired_below(topic: str, data: bytes) -> int:
    """The key generations a stored ``forgotten`` event retired: those below the
    number returned (its own generation and every one before); 0 for any other
    event, or one whose generation does not read (the chain's checks report it).
    Read from the stored state, nothing opened."""
    if topic != UserForgotten.TOPIC:
        return 0
    try:
        generation = unpack_state(data).get("key_generation", 0)
    except DECODE_ERRORS:
        return 0
    return generation + 1 if type(generation) is int else 0
