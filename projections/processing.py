"""Feeding views: catch-up, follow and rebuild, in batches, exactly once.

Each batch of a view is one transaction that holds the view's lock, rereads the
view's tracking position, applies only the events after it, and records the last
one's position. So a worker killed at any instant, two workers on one view, or a
rebuild swapped in under a running worker never lose or repeat an event.
"""

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from projections.reader import LogReader
from projections.store import ViewStore
from projections.view import (
    Generation,
    Positioned,
    View,
    create_tables,
    live_tables_exist,
    swap_in_rebuild,
)

OnBatch = Callable[[int], None]
"""Called after each batch with how far (in positions) the batch advanced."""


@dataclass(frozen=True)
class Target:
    """A view and the generation of its tables that a run writes to."""

    view: View
    generation: Generation

    @property
    def key(self) -> str:
        return self.generation.key


class Processor:
    """Applies the ledger's events to views, a batch per transaction."""

    def __init__(self, store: ViewStore, reader: LogReader, batch_size: int) -> None:
        self.store = store
        self.reader = reader
        self.batch_size = batch_size

    def ensure_live(self, view: View) -> None:
        """Creates the view's live tables if any is missing (from position 0)."""
        live = Generation(view.name, rebuild=False)
        with self.store.writing(live.key) as tx:
            if not live_tables_exist(tx, view):
                create_tables(tx, view, live)
                self.store.forget(tx, live.key)

    def position(self, key: str) -> int:
        with self.store.reading() as tx:
            return self.store.position(tx, key)

    def run(
        self, targets: Sequence[Target], up_to: int, on_batch: OnBatch | None = None
    ) -> Counter[str]:
        """Brings every target up to position ``up_to``; counts events applied."""
        positions = {target.key: self.position(target.key) for target in targets}
        applied: Counter[str] = Counter()
        while (start := min(positions.values(), default=up_to)) < up_to:
            batch = self.reader.batch(start, self.batch_size, up_to)
            if not batch:
                break
            for target in targets:
                todo = [event for event in batch if event[0] > positions[target.key]]
                if todo:
                    positions[target.key], count = self._write(
                        target, todo, positions[target.key]
                    )
                    applied[target.view.name] += count
            if on_batch is not None:
                on_batch(batch[-1][0] - start)
        return applied

    def _write(
        self, target: Target, events: Sequence[Positioned], expected: int
    ) -> tuple[int, int]:
        """Applies the events the view has not applied yet; its new position and
        how many were applied."""
        with self.store.writing(target.key) as tx:
            stored = self.store.position(tx, target.key)
            if stored < expected:  # the view went back (reset): reread from there
                return stored, 0
            todo = [event for event in events if event[0] > stored]
            if not todo:
                return stored, 0
            names = target.view.names(tx.dialect, target.generation)
            target.view.apply(tx, names, todo)
            self.store.track(tx, target.key, todo[-1][0])
            return todo[-1][0], len(todo)

    def rebuild(
        self, views: Sequence[View], on_batch: OnBatch | None = None
    ) -> Counter[str]:
        """Builds each view anew beside the live one, then swaps it in."""
        targets = [Target(view, Generation(view.name, rebuild=True)) for view in views]
        for target in targets:
            with self.store.writing(target.key) as tx:
                create_tables(tx, target.view, target.generation)
                self.store.forget(tx, target.key)
        applied = self.run(targets, self.reader.head(), on_batch)
        for target in targets:
            applied[target.view.name] += self._swap(target)
        return applied

    def _swap(self, target: Target) -> int:
        """Applies the last events to the rebuild and renames it into place, all
        while holding the live view's lock, so no live write falls in between."""
        live = Generation(target.view.name, rebuild=False)
        names = target.view.names(self.store.dialect, target.generation)
        # Read before the transaction: on PostgreSQL the head waits for every
        # older transaction, and this one may take a transaction id.
        head = self.reader.head()
        with self.store.writing(live.key) as tx:
            tx.dialect.lock(tx.cursor, target.key)  # always after the live lock
            position = self.store.position(tx, target.key)
            tail = list(self.reader.events(position, head, self.batch_size))
            for start in range(0, len(tail), self.batch_size):
                target.view.apply(tx, names, tail[start : start + self.batch_size])
            if tail:
                self.store.track(tx, target.key, tail[-1][0])
            swap_in_rebuild(tx, target.view)
            self.store.move_tracking(tx, target.key, live.key)
        return len(tail)

    def follow(
        self,
        targets: Sequence[Target],
        stop: threading.Event,
        poll_seconds: float,
        on_batch: OnBatch | None = None,
    ) -> None:
        """Keeps the targets up to date until ``stop`` is set, looking for new
        events every ``poll_seconds``.

        It polls on every backend: PostgreSQL appends send no NOTIFY, which would
        make writers commit one at a time.
        """
        while not stop.is_set():
            self.run(targets, self.reader.head(), on_batch)
            stop.wait(poll_seconds)
