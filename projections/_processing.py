"""Feeding views: catch-up, follow and rebuild, in batches, exactly once.

Each batch of a view is one transaction that holds the view's lock, rereads the
view's tracking position, applies only the events after it, and records the last
one's position. So a worker killed at any instant, two workers on one view, or a
rebuild swapped in under a running worker never lose or repeat an event.

On a sharded ledger each shard's log has a Processor of its own, with a
``BatchRule`` (``projections._moved``): the locks a batch takes besides its own,
and which of its events the view takes (an event a move copied is taken once).
"""

import threading
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext

from ledger.log_source import Positioned
from projections._applying import (
    BatchRule,
    OnBatch,
    Target,
    Unappliable,
    after,
    apply_events,
)
from projections._errors import ViewCannotApply
from projections._reader import LogReader, ReadAhead
from projections._store import Tx, ViewStore
from projections._view import (
    Generation,
    View,
    create_tables,
    index_loaded_tables,
    live_tables_exist,
    swap_in_rebuild,
    upgrade_tables,
)


class Processor:
    """Applies the ledger's events to views, a batch per transaction."""

    def __init__(
        self,
        store: ViewStore,
        reader: LogReader,
        batch_size: int,
        rule: BatchRule | None = None,
    ) -> None:
        self.store = store
        self.reader = reader
        self.batch_size = batch_size
        self.rule = rule

    def ensure_live(
        self,
        view: View,
        shards: Sequence[int] = (0,),
        forget: Callable[[Tx, list[str]], None] | None = None,
    ) -> None:
        """Creates the view's live tables if any is missing (from position 0 of
        every one of ``shards``; ``forget`` drops what else is kept under their
        tracking keys), or adds the columns that tables of an earlier release
        lack."""
        live = Generation(view.name, rebuild=False)
        with self.store.writing(live.key) as tx:
            if not live_tables_exist(tx, view):
                create_tables(tx, view, live)
                keys = [live.of_shard(shard).key for shard in shards]
                for key in keys:
                    self.store.forget(tx, key)
                if forget is not None:
                    forget(tx, keys)
            else:
                upgrade_tables(tx, view, live)

    def position(self, key: str) -> int:
        with self.store.reading() as tx:
            return self.store.position(tx, key)

    def run(
        self, targets: Sequence[Target], up_to: int, on_batch: OnBatch | None = None
    ) -> Counter[str]:
        """Brings every target up to position ``up_to``; counts events applied.

        A target that cannot apply an event (ViewCannotApply) stops there; the
        others go on to ``up_to``, then the first such error is raised (with the
        others as notes).
        """
        return self.advance(targets, up_to, on_batch)[0]

    def advance(
        self,
        targets: Sequence[Target],
        up_to: int,
        on_batch: OnBatch | None = None,
        stop: threading.Event | None = None,
    ) -> tuple[Counter[str], dict[str, int]]:
        """``run``; also each target's position at the end, by view name. With
        ``stop``, it ends after the batch during which ``stop`` was set."""
        positions = {target.key: self.position(target.key) for target in targets}
        going = list(targets)
        stopped: list[ViewCannotApply] = []
        applied: Counter[str] = Counter()
        with self._reading() as reader:
            while going and (start := min(positions[t.key] for t in going)) < up_to:
                batch = reader.batch(start, self.batch_size, up_to)
                if not batch:
                    break
                self._write_batch(batch, going, positions, applied, stopped)
                if on_batch is not None:
                    on_batch(batch[-1][0] - start)
                if stop is not None and stop.is_set():
                    break
        if stopped:
            for other in stopped[1:]:
                stopped[0].add_note(str(other))
            raise stopped[0]
        return applied, {t.view.name: positions[t.key] for t in targets}

    def _reading(self) -> AbstractContextManager[LogReader | ReadAhead]:
        """The reader of a run: one that reads the next batch while the views
        write, where the log is read apart from the writes (on SQLite a read
        waits for the write and for the interpreter, so it only costs)."""
        if self.reader.source.reads_apart:
            return ReadAhead(self.reader)
        return nullcontext(self.reader)

    def _write_batch(
        self,
        batch: Sequence[Positioned],
        going: list[Target],
        positions: dict[str, int],
        applied: Counter[str],
        stopped: list[ViewCannotApply],
    ) -> None:
        """Applies a batch to every target still going, in one transaction for
        all; if that fails for a value, one transaction per target, so a target
        that cannot apply an event stops (into ``stopped``) and the others go on."""
        work = [(t, todo) for t in going if (todo := after(batch, positions[t.key]))]
        try:
            reached = self._together(work, positions)
        except Unappliable:
            reached = {}
            for target, todo in work:
                try:
                    reached[target.key] = self._write(
                        target, todo, positions[target.key]
                    )
                except ViewCannotApply as error:
                    stopped.append(error)
                    going.remove(target)
        for target, _ in work:
            if target.key in reached:
                positions[target.key], count = reached[target.key]
                applied[target.view.name] += count

    def _together(
        self,
        work: Sequence[tuple["Target", Sequence[Positioned]]],
        positions: dict[str, int],
    ) -> dict[str, tuple[int, int]]:
        """``_transaction`` of every target in one transaction (one commit),
        holding every target's lock; each target's new position and count."""
        if not work:
            return {}
        longest = max((todo for _, todo in work), key=len)
        with self._writing([target for target, _ in work], longest) as tx:
            return {
                target.key: self._in(tx, target, todo, positions[target.key])
                for target, todo in work
            }

    def _write(
        self, target: Target, events: Sequence[Positioned], expected: int
    ) -> tuple[int, int]:
        """Applies the events the view has not applied yet; its new position and
        how many were applied.

        If the batch fails for its values, its events are applied again one per
        transaction, so the ones before the culprit are kept, and the culprit
        raises ViewCannotApply naming its position and user.
        """
        try:
            return self._transaction(target, events, expected)
        except Unappliable as failure:
            if len(events) == 1:
                at, culprit = events[0]
                raise ViewCannotApply(
                    target.view.name, at, culprit.user_id, str(failure)
                ) from failure.cause
        position, count = expected, 0
        for event in events:
            reached, done = self._write(target, [event], position)
            if reached < position:  # the view went back (reset): reread from there
                return reached, count
            position, count = reached, count + done
        return position, count

    def _transaction(
        self, target: Target, events: Sequence[Positioned], expected: int
    ) -> tuple[int, int]:
        with self._writing([target], events) as tx:
            return self._in(tx, target, events, expected)

    def _writing(
        self, targets: Sequence[Target], events: Sequence[Positioned]
    ) -> AbstractContextManager[Tx]:
        """A transaction holding the targets' locks (and the rule's)."""
        keys = [target.key for target in targets]
        if self.rule is not None:
            keys += self.rule.locks(targets, events)
        return self.store.writing(*keys)

    def _in(
        self, tx: Tx, target: Target, events: Sequence[Positioned], expected: int
    ) -> tuple[int, int]:
        """Applies the events after the target's stored position and records the
        last one's, in ``tx`` (which holds the target's lock)."""
        stored = self.store.position(tx, target.key)
        if stored < expected:  # the view went back (reset): reread from there
            return stored, 0
        todo = after(events, stored)
        if not todo:
            return stored, 0
        taken = todo if self.rule is None else self.rule.select(tx, target, todo)
        if taken:
            names = target.view.names(tx.dialect, target.generation)
            apply_events(target.view, tx, names, taken)
        self.store.track(tx, target.key, todo[-1][0])
        return todo[-1][0], len(taken)

    def rebuild(
        self, views: Sequence[View], on_batch: OnBatch | None = None
    ) -> Counter[str]:
        """Builds each view anew beside the live one, then swaps it in."""
        targets = [Target(view, Generation(view.name, rebuild=True)) for view in views]
        for target in targets:
            with self.store.writing(target.key) as tx:
                create_tables(tx, target.view, target.generation, loading=True)
                self.store.forget(tx, target.key)
        head = self.reader.head()
        try:
            applied = self.run(targets, head, on_batch)
        except ViewCannotApply as failure:
            # The views that reached the head are swapped in; one that could not
            # apply an event keeps its live view, and the error is raised (with
            # any error of a swap as a note).
            for target in targets:
                if self.position(target.key) >= head:
                    try:
                        self._swap(target)
                    except ViewCannotApply as other:
                        failure.add_note(str(other))
            raise
        for target in targets:
            applied[target.view.name] += self._swap(target)
        return applied

    def _swap(self, target: Target) -> int:
        """Applies the last events to the rebuild and renames it into place, all
        while holding the live view's lock, so no live write falls in between."""
        with self.store.writing(target.key) as tx:  # before the live view's lock
            index_loaded_tables(tx, target.view, target.generation)
        # Read before the transaction: on PostgreSQL the head waits for every
        # older transaction, and this one may take a transaction id.
        head = self.reader.head()
        try:
            return self._swap_at(target, head)
        except Unappliable:
            # The last events, one per transaction: ViewCannotApply names the
            # culprit; if none fails alone, the tail is applied and the swap is
            # tried once more, with nothing left to apply.
            applied = self.run([target], head)[target.view.name]
            return applied + self._swap_at(target, head)

    def _swap_at(self, target: Target, head: int) -> int:
        live = Generation(target.view.name, rebuild=False)
        with self.store.writing(live.key, target.key) as tx:  # live lock first
            applied = self.apply_tail(tx, target, head)
            swap_in_rebuild(tx, target.view)
            self.store.move_tracking(tx, target.key, live.key)
        return applied

    def apply_tail(self, tx: Tx, target: Target, head: int) -> int:
        """Applies the events after the target's position up to ``head`` in
        ``tx`` (which holds the target's lock, and the rule's); how many."""
        position = self.store.position(tx, target.key)
        tail = list(self.reader.events(position, head, self.batch_size))
        taken = tail if self.rule is None else self.rule.select(tx, target, tail)
        names = target.view.names(tx.dialect, target.generation)
        for start in range(0, len(taken), self.batch_size):
            apply_events(target.view, tx, names, taken[start : start + self.batch_size])
        if tail:
            self.store.track(tx, target.key, tail[-1][0])
        return len(taken)
