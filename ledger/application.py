"""The ``eventsourcing`` application that stores the users' context streams."""

from datetime import UTC, datetime
from typing import Any, ClassVar
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
    snapshotting_intervals: ClassVar[dict[type[Any], int]] = {
        UserContexts: SNAPSHOT_INTERVAL
    }
    snapshotting_projectors: ClassVar[dict[type[Any], Any]] = {
        UserContexts: project_user
    }
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
        """The user's aggregate; an empty one for a user with no events yet."""
        try:
            aggregate: UserContexts = self.repository.get(
                user_aggregate_id(user_id), projector_func=project_user
            )
        except AggregateNotFoundError:
            return UserContexts.start(user_id, now)
        return aggregate

    def stream(self, user_id: str) -> list[ContextEvent]:
        """Every stored event of the user, in version order."""
        events = self.events.get(user_aggregate_id(user_id))
        return [event for event in events if isinstance(event, ContextEvent)]
