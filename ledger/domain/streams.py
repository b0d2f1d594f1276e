"""A user's stream: its id, and the rules an event must meet to follow it."""

from functools import lru_cache
from uuid import UUID, uuid5

from ledger.domain.events import CarriesMetadata, ContextEvent, UserForgotten
from ledger.domain.models import Context

_USER_NAMESPACE = UUID("6f1d4c2e-8a57-4f0b-9c1e-3b2a7d9e5c40")


@lru_cache(maxsize=65536)
def user_aggregate_id(user_id: str) -> UUID:
    """The stream id of a user: the same in every process, so writers contend."""
    return uuid5(_USER_NAMESPACE, user_id)


def check_follows(
    event: ContextEvent, user_id: str, version: int, key_generation: int
) -> None:
    """ValueError unless ``event`` is the next version of the user's stream and
    names the stream's key generation when it seals metadata or erases."""
    if event.originator_version != version + 1:
        msg = (
            f"event version {event.originator_version} of user {user_id!r} "
            f"does not follow version {version}"
        )
        raise ValueError(msg)
    if (
        isinstance(event, UserForgotten)
        or (
            isinstance(event, CarriesMetadata) and event.metadata_commitment is not None
        )
    ) and event.key_generation != key_generation:
        msg = (
            f"event version {event.originator_version} of user {user_id!r} "
            f"names key generation {event.key_generation}, but the stream is at "
            f"generation {key_generation}"
        )
        raise ValueError(msg)


def check_thread(current: Context | None, event: ContextEvent) -> None:
    """ValueError if ``event`` names another thread than its context's."""
    if current is not None and current.thread_id != event.thread_id:
        msg = (
            f"event version {event.originator_version} of context "
            f"{event.context_id!r} names thread {event.thread_id!r}, but the "
            f"context belongs to thread {current.thread_id!r}"
        )
        raise ValueError(msg)
