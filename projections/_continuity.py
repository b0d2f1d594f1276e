"""The continuity view: per user, how contexts were created, reused and ended.

It also proves from history that no thread ever had a second context created while
one was active (an *overlap*): it keeps each thread's open context and records
every overlap it sees, with the position of the event that caused it.
"""

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ledger._domain.contexts import (
    ends_context,
    evicts_context,
    forgets_user,
    opens_context,
    user_aggregate_id,
)
from ledger._domain.events import ContextEvent, from_ledger_event
from ledger._domain.models import LedgerEvent
from ledger.log_source import EventRecord, Positioned
from projections._models import ContinuityFigures
from projections._store import Tx
from projections._view import Names, Table, View, compare_rows

COUNTERS = (
    "created",
    "reused",
    "updated",
    "expired",
    "cleared",
    "evicted",
    "first_reuses",
)
"""Per user: events by kind, the ledger's evictions apart from the callers'
clears, and first reuses (of contexts reused at least once)."""
_CHUNK = 500


@dataclass
class Continuity:
    """The view's state for some users, changed event by event."""

    counts: dict[str, Counter[str]] = field(default_factory=dict)
    # (user, thread) -> its open context; None once ended (a row to delete).
    open_threads: dict[tuple[str, str], str | None] = field(default_factory=dict)
    overlaps: dict[int, tuple[str, str, str, str]] = field(default_factory=dict)
    # user -> threads it has in open_threads (so an erasure finds them at once)
    threads_of: dict[str, set[str]] = field(default_factory=dict)

    def apply(self, position: int, event: ContextEvent | EventRecord) -> None:
        user = event.user_id
        counts = self.counts.get(user)
        if counts is None:  # not setdefault: that builds a Counter every event
            counts = self.counts[user] = Counter()
        if forgets_user(event):  # no counter: the figures stay as they were
            for thread_id in self.threads_of.pop(user, ()):
                if self.open_threads.get((user, thread_id)) is not None:
                    self.open_threads[user, thread_id] = None
            return
        counts["evicted" if evicts_context(event) else event.KIND] += 1
        thread = (user, event.thread_id)
        threads = self.threads_of.get(user)
        if threads is None:
            threads = self.threads_of[user] = set()
        threads.add(event.thread_id)
        if opens_context(event):
            active = self.open_threads.get(thread)
            if active is not None:
                self.overlaps[position] = (*thread, active, event.context_id)
            self.open_threads[thread] = event.context_id
        elif ends_context(event):
            if self.open_threads.get(thread) == event.context_id:
                self.open_threads[thread] = None
        elif event.KIND == "reused" and getattr(event, "reuse_count", 0) == 1:
            counts["first_reuses"] += 1


class ContinuityView(View):
    name: ClassVar[str] = "continuity"
    tables: ClassVar[tuple[Table, ...]] = (
        Table(
            "continuity_users",
            "user_id {text} PRIMARY KEY, "
            + ", ".join(f"{c} {{int}} NOT NULL" for c in COUNTERS),
            # Evictions came with on_limit: a view built before counted none.
            added=(("evicted", "{int} NOT NULL DEFAULT 0"),),
        ),
        Table(
            "continuity_threads",
            "user_id {text} NOT NULL, thread_id {text} NOT NULL, "
            "context_id {text} NOT NULL, PRIMARY KEY (user_id, thread_id)",
        ),
        Table(
            "continuity_overlaps",
            "position {int} PRIMARY KEY, user_id {text} NOT NULL, "
            "thread_id {text} NOT NULL, active_context_id {text} NOT NULL, "
            "new_context_id {text} NOT NULL",
            indexes=("user_id",),
        ),
    )

    def apply(self, tx: Tx, names: Names, events: Sequence[Positioned]) -> None:
        state = self._stored(tx, names, sorted({e.user_id for _, e in events}))
        for position, event in events:
            state.apply(position, event)
        users = [(u, *(c[name] for name in COUNTERS)) for u, c in state.counts.items()]
        columns = ", ".join(COUNTERS)
        tx.run_many(
            f"INSERT INTO {names['continuity_users']} (user_id, {columns}) "
            f"VALUES ({', '.join('?' * (len(COUNTERS) + 1))}) ON CONFLICT (user_id) "
            f"DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in COUNTERS)}",
            users,
        )
        threads = names["continuity_threads"]
        ended = [key for key, context in state.open_threads.items() if context is None]
        tx.run_many(f"DELETE FROM {threads} WHERE user_id = ? AND thread_id = ?", ended)
        tx.run_many(
            f"INSERT INTO {threads} (user_id, thread_id, context_id) VALUES (?, ?, ?) "
            "ON CONFLICT (user_id, thread_id) DO UPDATE SET context_id = "
            "excluded.context_id",
            [(*key, cid) for key, cid in state.open_threads.items() if cid is not None],
        )
        tx.run_many(
            f"INSERT INTO {names['continuity_overlaps']} (position, user_id, "
            "thread_id, active_context_id, new_context_id) VALUES (?, ?, ?, ?, ?)",
            [(position, *row) for position, row in state.overlaps.items()],
        )

    def differences(
        self, tx: Tx, names: Names, events: Iterable[Positioned]
    ) -> list[str]:
        expected = Continuity()
        for position, event in events:
            expected.apply(position, event)
        actual = self._stored(tx, names, None)
        return [
            *compare_rows(
                "user",
                COUNTERS,
                {u: tuple(c[n] for n in COUNTERS) for u, c in expected.counts.items()},
                {u: tuple(c[n] for n in COUNTERS) for u, c in actual.counts.items()},
            ),
            *compare_rows(
                "open thread",
                ("context_id",),
                {k: (c,) for k, c in expected.open_threads.items() if c is not None},
                {k: (c,) for k, c in actual.open_threads.items()},
            ),
            *compare_rows(
                "overlap at position",
                ("user_id", "thread_id", "active_context_id", "new_context_id"),
                dict(expected.overlaps.items()),
                dict(actual.overlaps.items()),
            ),
        ]

    def figures(self, tx: Tx, names: Names, user_id: str | None) -> ContinuityFigures:
        """One user's figures, or everyone's summed when ``user_id`` is None."""
        where, params = (
            ("WHERE user_id = ?", (user_id,)) if user_id is not None else ("", ())
        )
        sums = ", ".join(f"COALESCE(SUM({c}), 0) AS {c}" for c in COUNTERS)
        row = tx.rows(
            f"SELECT COUNT(*), {sums} FROM {names['continuity_users']} {where}", params
        )[0]
        users, counts = int(row[0]), dict(zip(COUNTERS, map(int, row[1:]), strict=True))
        overlapping = tx.rows(
            "SELECT COUNT(*) FROM (SELECT DISTINCT user_id, thread_id FROM "
            f"{names['continuity_overlaps']} {where}) AS threads",
            params,
        )[0][0]
        return figures_of(user_id, users, counts, int(overlapping))

    def _stored(self, tx: Tx, names: Names, users: list[str] | None) -> Continuity:
        """The stored state of ``users`` (of everyone when None)."""
        state = Continuity()
        for where, params in _user_filters(users):
            for user, *counts in tx.rows(
                f"SELECT user_id, {', '.join(COUNTERS)} FROM "
                f"{names['continuity_users']} {where}",
                params,
            ):
                state.counts[user] = Counter(dict(zip(COUNTERS, counts, strict=True)))
            for user, thread, context in tx.rows(
                "SELECT user_id, thread_id, context_id FROM "
                f"{names['continuity_threads']} {where}",
                params,
            ):
                state.open_threads[user, thread] = context
                state.threads_of.setdefault(user, set()).add(thread)
            if users is None:
                for position, *overlap in tx.rows(
                    "SELECT position, user_id, thread_id, active_context_id, "
                    f"new_context_id FROM {names['continuity_overlaps']}"
                ):
                    state.overlaps[position] = (*overlap,)
        return state


def _user_filters(users: list[str] | None) -> Iterable[tuple[str, Sequence[Any]]]:
    if users is None:
        yield "", ()
        return
    for start in range(0, len(users), _CHUNK):
        chunk = users[start : start + _CHUNK]
        yield f"WHERE user_id IN ({', '.join('?' * len(chunk))})", chunk


def figures_of(
    user_id: str | None, users: int, counts: dict[str, int], overlapping: int
) -> ContinuityFigures:
    """The figures from the view's counters (summed over ``users`` users)."""
    created = counts["created"]
    return ContinuityFigures(
        user_id=user_id,
        users=users,
        created=created,
        reused=counts["reused"],
        updated=counts["updated"],
        expired=counts["expired"],
        cleared=counts["cleared"],
        evicted=counts["evicted"],
        never_reused=created - counts["first_reuses"],
        reuses_per_created=round(counts["reused"] / created, 4) if created else None,
        threads_with_overlap=overlapping,
    )


def continuity_of(user_id: str, events: Iterable[LedgerEvent]) -> ContinuityFigures:
    """One user's figures from the user's history (``ContextLedger.history``),
    counted by the same rules as the view."""
    state = Continuity()
    stream = user_aggregate_id(user_id)
    for event in events:
        state.apply(event.version, from_ledger_event(event, stream))
    counts = state.counts.get(user_id, Counter())
    overlapping = {(user, thread) for _, (user, thread, *_) in state.overlaps.items()}
    return figures_of(
        user_id,
        int(bool(counts)),
        {name: counts[name] for name in COUNTERS},
        len(overlapping),
    )
