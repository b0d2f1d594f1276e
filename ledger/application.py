"""The ``eventsourcing`` application that stores the users' context streams."""

from copy import deepcopy
from datetime import UTC, datetime
from typing import Any, cast
from uuid import UUID

from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.utils import Environment, get_topic

from ledger.aggregate import UserContexts, UserSnapshot, project_user, user_aggregate_id
from ledger.events import ContextEvent
from ledger.serialization import MsgpackTranscoder, PydanticMapper

SNAPSHOT_INTERVAL = 50
AGGREGATE_CACHE_SIZE = 2048


def utc_now() -> datetime:
    """The clock every event takes its time from (freezegun moves it in tests)."""
    return datetime.now(tz=UTC)


class LedgerApplication(Application[UUID]):
    """Stores one stream of context events per user, with snapshots."""

    name = "ctxledger"
    is_snapshotting_enabled = True
    snapshot_class = UserSnapshot  # type: ignore[assignment]

    def construct_env(self, name: str, env: Any = None) -> Environment:
        # Only the settings given here count: process environment variables such as
        # PERSISTENCE_MODULE or CIPHER_KEY must not silently reconfigure the ledger.
        settings = {
            "IS_SNAPSHOTTING_ENABLED": "y",
            "TRANSCODER_TOPIC": get_topic(MsgpackTranscoder),
            "MAPPER_TOPIC": get_topic(PydanticMapper),
            "AGGREGATE_CACHE_MAXSIZE": str(AGGREGATE_CACHE_SIZE),
            **(env or {}),
        }
        return Environment(name, settings)

    def load(self, user_id: str, now: datetime) -> UserContexts:
        """The user's aggregate as stored now; an empty one for a new user."""
        try:
            aggregate: UserContexts = self.repository.get(
                user_aggregate_id(user_id), projector_func=project_user
            )
        except AggregateNotFoundError:
            return UserContexts.start(user_id, now)
        return aggregate

    def load_cached(self, user_id: str, now: datetime) -> UserContexts:
        """The user's aggregate as this process last saw it, without reading the store.

        It may be stale if other processes wrote since. Only commands that append
        may use it: their events are numbered from the cached version, so a stale
        decision conflicts on save instead of being stored.
        """
        cache = self.repository.cache
        try:
            if cache is not None:
                cached = cast(UserContexts, cache.get(user_aggregate_id(user_id)))
                return deepcopy(cached)
        except KeyError:
            pass  # not cached: load it from the store
        return self.load(user_id, now)

    def record(self, aggregate: UserContexts) -> None:
        """Stores the aggregate's new events, then caches and maybe snapshots it.

        After a successful save the aggregate is exactly the recorded state (only
        ``apply`` changes it), so it is cached and snapshotted as it is, instead of
        being read back from the store.
        """
        before = aggregate.version - len(aggregate.pending)
        # The event store's put is what save() does for us; save() would first run
        # runtime Protocol checks that cost more than the rest of the Python work.
        self.events.put(aggregate.collect_events())
        if self.repository.cache is not None:
            self.repository.cache.put(aggregate.id, aggregate)
        if self.snapshots is not None and (
            aggregate.version // SNAPSHOT_INTERVAL > before // SNAPSHOT_INTERVAL
        ):
            self.snapshots.put([UserSnapshot.take(aggregate)])

    def stream(self, user_id: str) -> list[ContextEvent]:
        """Every stored event of the user, in version order."""
        events = self.events.get(user_aggregate_id(user_id))
        return [event for event in events if isinstance(event, ContextEvent)]
