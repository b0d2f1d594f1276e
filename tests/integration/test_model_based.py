"""Random command sequences behave like a plain dict model of the contexts."""

import tempfile
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ledger import ContextLedger, ContextLimitExceeded, ContextNotFound
from ledger._domain.hashing import GENESIS_HASH, chain_hash

USERS = st.sampled_from(["ann", "ben", "cat"])
THREADS = st.sampled_from(["t1", "t2", "t3", "t4"])
RUNS = st.none() | st.sampled_from(["r1", "r2"])
TTLS = st.none() | st.sampled_from([5.0, 30.0])
PATCHES = st.dictionaries(
    st.sampled_from(["a", "b", "c"]), st.none() | st.integers(0, 3), max_size=2
)
LIMIT = 3
START = datetime(2026, 6, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Expected:
    context_id: str
    run_id: str | None
    metadata: dict[str, Any]
    ttl: float | None
    last_used: datetime
    reuse_count: int = 0
    fields: dict[str, Any] = field(default_factory=dict)

    def due(self, now: datetime) -> bool:
        return (
            self.ttl is not None and self.last_used + timedelta(seconds=self.ttl) <= now
        )


def _merge(current: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in {**current, **patch}.items() if v is not None}


class LedgerMachine(RuleBasedStateMachine):
    url = "memory://"

    def __init__(self) -> None:
        super().__init__()
        self.clock = freeze_time(START)
        self.frozen = self.clock.start()
        self.folder = tempfile.TemporaryDirectory()
        url = self.url.replace("DIR", self.folder.name)
        self.ledger = ContextLedger.open(url, max_contexts_per_user=LIMIT)
        self.model: dict[tuple[str, str], Expected] = {}

    def teardown(self) -> None:
        self.ledger.close()
        self.clock.stop()
        self.folder.cleanup()

    def now(self) -> datetime:
        return datetime.now(tz=UTC)

    def live(self, user: str) -> dict[str, Expected]:
        return {
            thread: expected
            for (owner, thread), expected in self.model.items()
            if owner == user and not expected.due(self.now())
        }

    def drop_due(self, user: str) -> int:
        due = [
            key for key, e in self.model.items() if key[0] == user and e.due(self.now())
        ]
        for key in due:
            del self.model[key]
        return len(due)

    @rule(user=USERS, thread=THREADS, run=RUNS, patch=PATCHES, ttl=TTLS)
    def open_context(
        self,
        user: str,
        thread: str,
        run: str | None,
        patch: dict[str, Any],
        ttl: float | None,
    ) -> None:
        current = self.live(user).get(thread)
        if current is None and len(self.live(user)) >= LIMIT:
            with pytest.raises(ContextLimitExceeded):
                self.ledger.open_context(
                    user, thread, run_id=run, metadata=patch, ttl_seconds=ttl
                )
            return
        got = self.ledger.open_context(
            user, thread, run_id=run, metadata=patch, ttl_seconds=ttl
        )
        if current is not None:
            assert got.context_id == current.context_id
            self.model[(user, thread)] = replace(
                current,
                run_id=run or current.run_id,
                metadata=_merge(current.metadata, patch),
                ttl=ttl if ttl is not None else current.ttl,
                last_used=self.now(),
                reuse_count=current.reuse_count + 1,
            )
        else:
            self.drop_due(user)
            assert got.context_id not in {e.context_id for e in self.model.values()}
            self.model[(user, thread)] = Expected(
                got.context_id, run, _merge({}, patch), ttl, self.now()
            )

    @rule(user=USERS, thread=THREADS, patch=PATCHES, run=RUNS)
    def update_context(
        self, user: str, thread: str, patch: dict[str, Any], run: str | None
    ) -> None:
        current = self.live(user).get(thread)
        if current is None:
            with pytest.raises(ContextNotFound):
                self.ledger.update_context(user, f"missing-{thread}", metadata=patch)
            return
        self.ledger.update_context(user, current.context_id, run_id=run, metadata=patch)
        self.model[(user, thread)] = replace(
            current,
            run_id=run or current.run_id,
            metadata=_merge(current.metadata, patch),
            last_used=self.now(),
        )

    @precondition(lambda self: len(self.model) > 0)
    @rule(data=st.data(), other=USERS)
    def use_another_users_context_id(self, data: st.DataObject, other: str) -> None:
        owner, thread = data.draw(st.sampled_from(sorted(self.model)))
        if owner == other:
            return
        context_id = self.model[(owner, thread)].context_id
        with pytest.raises(ContextNotFound):
            self.ledger.clear_context(other, context_id)

    @rule(user=USERS, thread=THREADS)
    def clear_context(self, user: str, thread: str) -> None:
        current = self.model.get((user, thread))
        if current is None:
            return
        self.ledger.clear_context(user, current.context_id)
        del self.model[(user, thread)]

    @rule(user=USERS)
    def clear_user(self, user: str) -> None:
        self.drop_due(user)
        expected = len([key for key in self.model if key[0] == user])

        assert self.ledger.clear_user(user) == expected
        self.model = {key: e for key, e in self.model.items() if key[0] != user}

    @rule(seconds=st.sampled_from([1, 4, 10, 40]))
    def time_passes(self, seconds: int) -> None:
        self.frozen.tick(seconds)

    @rule()
    def expire_due(self) -> None:
        due = sum(self.drop_due(user) for user in ("ann", "ben", "cat"))

        assert self.ledger.expire_due() == due

    @invariant()
    def active_contexts_match_the_model(self) -> None:
        for user in ("ann", "ben", "cat"):
            got = {
                c.thread_id: (
                    c.context_id,
                    c.run_id,
                    c.metadata,
                    c.reuse_count,
                    c.ttl_seconds,
                )
                for c in self.ledger.active_contexts(user)
            }
            want = {
                thread: (e.context_id, e.run_id, e.metadata, e.reuse_count, e.ttl)
                for thread, e in self.live(user).items()
            }
            assert got == want

    @invariant()
    def each_users_stream_is_contiguous_and_chained(self) -> None:
        for user in ("ann", "ben", "cat"):
            history = self.ledger.history(user)
            assert [e.version for e in history] == list(range(1, len(history) + 1))
            previous = GENESIS_HASH
            for event in history:
                assert event.prev_hash == previous
                previous = chain_hash(event.model_dump(mode="json"))


class SQLiteLedgerMachine(LedgerMachine):
    url = "sqlite:///DIR/ledger.db"


MACHINE_SETTINGS = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLedgerInMemory = LedgerMachine.TestCase
TestLedgerInMemory.settings = MACHINE_SETTINGS
TestLedgerOnSQLite = SQLiteLedgerMachine.TestCase
TestLedgerOnSQLite.settings = settings(MACHINE_SETTINGS, max_examples=15)
