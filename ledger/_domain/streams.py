"""A user's stream: its id, and the rules an event must meet to follow it."""

from functools import lru_cache
from uuid import UUID, uuid5

from ledger._domain.events import CarriesMetadata, ContextEvent, UserForgotten
from ledger._domain.models import Context

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
    sealing = (
        isinstance(event, CarriesMetadata) and event.metadata_commitment is not None
    )
    check_generation(
        event.KIND,
        sealing=sealing,
        named=event.key_generation,
        stream=key_generation,
        where=f"event version {event.originator_version} of user {user_id!r}",
    )


def check_generation(
    kind: str, *, sealing: bool, named: int, stream: int, where: str
) -> None:
    """ValueError unless an event that seals metadata or erases (``forgotten``)
    names the stream's key generation: the rule for domain events and for the
    read side's records alike."""
    if (kind == UserForgotten.KIND or sealing) and named != stream:
        msg = (
            f"{where} names key generation {named}, but the stream is at "
            f"generation {stream}"
        )
        raise ValueError(msg)


def check_thread(current: Context | None, event: ContextEvent) -> None:
    """ValueError if ``event`` names another thread than its context's."""
    if current is not None:
        check_same_thread(
            current.thread_id,
            event.thread_id,
            event.originator_version,
            event.context_id,
        )


def check_same_thread(current: str, named: str, version: int, context_id: str) -> None:
    """ValueError if the event of ``version`` names another thread than its
    context's (``current``)."""
    if current != named:
        msg = (
            f"event version {version} of context {context_id!r} names thread "
            f"{named!r}, but the context belongs to thread {current!r}"
        )
        raise ValueError(msg)
