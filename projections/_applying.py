"""What applying a batch to a view is: the view and tables it writes to, the
rule a shard's log adds, and the failures that come from the values written."""

import bisect
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import psycopg
from eventsourcing.persistence import DataError, IntegrityError

from ledger.log_source import Positioned
from projections._store import Tx
from projections._view import Generation, Names, View

OnBatch = Callable[[int], None]
"""Called after each batch with how far (in positions) the batch advanced."""

DATA_ERRORS = (
    DataError,  # the library's names for the drivers' errors below
    IntegrityError,
    psycopg.DataError,
    psycopg.IntegrityError,
    sqlite3.DataError,
    sqlite3.IntegrityError,
    ValueError,  # raised before the database: a value that does not convert
    TypeError,
    OverflowError,
)
"""Failures of a view's write that come from the values written (a value the column
cannot hold, a row that contradicts the view), not from an unreachable database:
trying again cannot help, so they stop the view with ViewCannotApply."""


class Unappliable(Exception):
    """A batch failed with one of DATA_ERRORS; ``Processor._write`` finds the event."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause


@dataclass(frozen=True)
class Target:
    """A view and the generation of its tables that a run writes to."""

    view: View
    generation: Generation

    @property
    def key(self) -> str:
        return self.generation.key


class BatchRule(Protocol):
    """What a shard's log adds to the processing of a batch."""

    def locks(
        self, targets: Sequence[Target], events: Sequence[Positioned]
    ) -> list[str]:
        """Locks to hold besides the targets' own while writing ``events``."""
        ...

    def select(
        self, tx: Tx, target: Target, events: Sequence[Positioned]
    ) -> Sequence[Positioned]:
        """The events (after the target's position) that the view takes, with
        the positions the view keeps for them."""
        ...


def apply_events(
    view: View, tx: Tx, names: Names, events: Sequence[Positioned]
) -> None:
    """``view.apply``; a failure for the values written becomes Unappliable (the
    transaction it leaves is rolled back)."""
    try:
        view.apply(tx, names, events)
    except DATA_ERRORS as error:
        raise Unappliable(error) from error


def after(events: Sequence[Positioned], position: int) -> Sequence[Positioned]:
    """The events (in log order) after ``position``."""
    if not events or events[0][0] > position:
        return events
    return events[bisect.bisect_right(events, position, key=lambda e: e[0]) :]
