"""The settings ``ContextLedger.open`` takes, checked before anything opens."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypedDict

from ledger._domain import validation
from ledger._domain.models import OnLimit
from ledger._queries import Clock
from ledger._store.application import LedgerApplication, utc_now
from ledger.errors import LedgerConfigError


class Settings(TypedDict):
    """The keyword arguments of ``ContextLedger`` that ``open`` checks."""

    max_contexts_per_user: int
    default_ttl_seconds: float | None
    clock: Clock
    on_limit: OnLimit


def settings_of(
    max_contexts_per_user: int,
    default_ttl_seconds: float | None,
    clock: Clock | None,
    on_limit: OnLimit,
) -> Settings:
    """The settings ``ContextLedger.open`` was given, checked (LedgerConfigError
    or InvalidContextInput says which is wrong)."""
    limit = validation.positive_int(
        "max_contexts_per_user", max_contexts_per_user, setting=True
    )
    policy = validation.on_limit(on_limit)
    default_ttl = validation.ttl_seconds(default_ttl_seconds)
    if clock is not None and not callable(clock):
        raise LedgerConfigError(
            f"clock={clock!r} is not callable; pass a function that returns "
            "the current timezone-aware datetime, or None for the system clock"
        )
    return {
        "max_contexts_per_user": limit,
        "default_ttl_seconds": default_ttl,
        "clock": clock or utc_now,
        "on_limit": policy,
    }


@contextmanager
def closed_on_failure(application: LedgerApplication) -> Iterator[None]:
    """Closes the application if setting up the ledger around it fails."""
    try:
        yield
    except BaseException:
        application.close()
        raise
