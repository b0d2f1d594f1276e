"""The read side's fast paths against the domain's definitions.

``ledger._store.records`` decodes stored states straight into records, and the views
evolve contexts with ``evolve_fields``. On random histories stored in a real SQLite
file, each fast path must give what the domain gives: the mapper's decoded event
and its JSON form, the aggregate's contexts, and the history the domain events
make. Altered states must read exactly as the mapper reads them (or fail as it
fails).
"""

import tempfile
from collections.abc import Iterator
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgpack
import pytest
from eventsourcing.persistence import StoredEvent
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import ContextLedger, LedgerCorrupted, LedgerError
from ledger._domain.contexts import ContextFields, evolve_fields, project_user
from ledger._domain.events import ContextEvent
from ledger._domain.hashing import record_hash
from ledger._store.application import LedgerApplication
from ledger._store.chain_reads import Read, exact_read, quick_read
from ledger._store.records import EventRecord
from projections import Projections
from tests.helpers import execute_sql

USERS = ("alice", "bob")
THREADS = ("t1", "t2")
START = datetime(2026, 3, 1, tzinfo=UTC)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
metadata = st.dictionaries(st.text(min_size=1, max_size=6), json_values, max_size=3)
step = st.one_of(
    st.tuples(
        st.just("open"),
        st.sampled_from(USERS),
        st.sampled_from(THREADS),
        metadata,
        st.sampled_from([None, 30.0, 1e-3, 86400.5]),
    ),
    st.tuples(
        st.just("update"), st.sampled_from(USERS), st.sampled_from(THREADS), metadata
    ),
    st.tuples(st.just("clear"), st.sampled_from(USERS), st.sampled_from(THREADS)),
    st.tuples(st.just("expire")),
    st.tuples(st.just("forget"), st.sampled_from(USERS)),
    st.tuples(st.just("wait"), st.integers(1, 100)),
)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        self.now += timedelta(microseconds=250_001)
        return self.now


def run(ledger: ContextLedger, clock: Clock, action: tuple[Any, ...]) -> None:
    kind = action[0]
    if kind == "wait":
        clock.now += timedelta(seconds=action[1])
    elif kind == "expire":
        ledger.expire_due()
    elif kind == "forget":
        ledger.forget_user(action[1], reason="asked")
    elif kind == "open":
        _, user, thread, data, ttl = action
        ledger.open_context(
            user, thread, run_id=f"r{len(data)}", metadata=data, ttl_seconds=ttl
        )
    else:
        context = ledger.get_context(action[1], action[2])
        if context is None:
            return
        if kind == "update":
            ledger.update_context(action[1], context.context_id, metadata=action[3])
        else:
            ledger.clear_context(action[1], context.context_id, request_id="req-1")


def stored_events(app: LedgerApplication) -> list[StoredEvent]:
    return list(app.recorder.select_notifications(start=1, limit=100_000))


def domain_record(app: LedgerApplication, stored: StoredEvent) -> EventRecord:
    event = app.mapper.to_domain_event(stored)
    assert isinstance(event, ContextEvent)
    return EventRecord.of_event(event)


def facts(record: EventRecord) -> tuple[object, ...]:
    return (
        record.KIND,
        record.user_id,
        record.context_id,
        record.thread_id,
        record.run_id,
        record.timestamp,
        record.version,
        record.prev_hash,
        record.details,
        record.key_generation,
        record.ledger_record(),
    )


@pytest.fixture
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as name:
        yield Path(name)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(step, min_size=1, max_size=25))
def test_fast_records_equal_the_domain_on_random_histories(
    actions: list[tuple[Any, ...]],
) -> None:
    with tempfile.TemporaryDirectory() as name:
        clock = Clock()
        url = f"sqlite:///{Path(name) / 'ledger.db'}"
        with ContextLedger.open(url, clock=clock, max_contexts_per_user=3) as ledger:
            opened = 0
            for action in actions:
                with suppress(LedgerError):  # refused input: nothing was stored
                    run(ledger, clock, action)
                    opened += action[0] == "open"
            assert_fast_paths_agree(ledger, expected_events=opened)


def assert_fast_paths_agree(ledger: ContextLedger, expected_events: int) -> None:
    app = ledger._app
    everything = stored_events(app)
    assert len(everything) >= expected_events
    with app.keys.reading():
        for stored in everything:
            fast = app.records.read(stored)
            # The fast decoder took it (the mapper's records are not plain).
            assert fast.plain_json, stored.topic
            assert facts(fast) == facts(domain_record(app, stored))
            event = app.mapper.to_domain_event(stored)
            assert isinstance(event, ContextEvent)
            assert fast.ledger_record() == event.ledger_record()
            # verify_chain reads as the readers do and hashes what the domain's
            # chain record is.
            quick, exact = (
                quick_read(stored, app.records),
                exact_read(stored, app.records),
            )
            assert quick is not None, stored.topic
            assert isinstance(exact, Read)
            assert (quick.user_id, quick.prev_hash, quick.hash) == (
                event.user_id,
                event.prev_hash,
                record_hash(event.chain_record()),
            )
            assert exact == quick
    for user in USERS:
        domain = list(app.events_after(user, 0))
        history = [event.to_ledger_event() for event in domain]
        assert ledger.history(user) == history
        assert_contexts_agree(app, user, domain)


def test_fast_records_equal_the_domain_on_both_backends(durable_url: str) -> None:
    clock = Clock()
    actions: list[tuple[Any, ...]] = [
        ("open", "alice", "t1", {"a": [1, 2.5, None], "é": "x"}, 30.0),
        ("open", "alice", "t1", {"a": None, "b": True}, None),
        ("update", "alice", "t1", {"c": {"d": -(2**63)}}),
        ("open", "bob", "t2", {}, 1e-3),
        ("wait", 5),
        ("expire",),
        ("open", "bob", "t1", {"z": ""}, 86400.5),
        ("clear", "bob", "t1"),
        ("open", "alice", "t2", {"k": 1}, None),
        ("forget", "alice"),
        ("open", "alice", "t2", {"after": 1}, None),
    ]
    with ContextLedger.open(durable_url, clock=clock) as ledger:
        for action in actions:
            run(ledger, clock, action)
        assert_fast_paths_agree(ledger, expected_events=10)


def assert_contexts_agree(
    app: LedgerApplication, user: str, domain: list[ContextEvent]
) -> None:
    """``evolve_fields`` over the records gives the aggregate's contexts."""
    aggregate = project_user(None, domain)
    contexts: dict[str, ContextFields | None] = {}
    for record in app.records_after(user, 0):
        if record.KIND == "forgotten":
            contexts = dict.fromkeys(contexts)
            continue
        contexts[record.context_id] = evolve_fields(
            contexts.get(record.context_id), record
        )
    live = {cid: fields for cid, fields in contexts.items() if fields is not None}
    expected = {} if aggregate is None else aggregate.contexts
    assert live == {cid: dict(c.__dict__) for cid, c in expected.items()}


def _altered(state: dict[str, Any], other: dict[str, Any]) -> list[dict[str, Any]]:
    """Altered copies of a stored state of a created event."""
    changes: list[dict[str, Any]] = [
        {"ttl_seconds": 5},
        {"ttl_seconds": float("nan")},
        {"extra": 1},
        {"class_version": 2},
        {"format": 3},
        {"format": True},
        {"user_id": b"alice"},
        {"run_id": 7},
        {"metadata": {"plain": 1}},
        {"metadata_salt": "00"},
        {"metadata_commitment": None},
        {"key_generation": True},
        {"key_generation": 9},
        {"key_generation": -1},
        {"timestamp": 5},
        {"sealed": other["sealed"]},
        {"sealed": b"short"},
        {"sealed": "text"},
        {"command_id": None},
        {"request_id": 5},
    ]
    altered = [{**state, **change} for change in changes]
    for name in ("sealed", "ttl_seconds", "prev_hash", "metadata_commitment"):
        altered.append({k: v for k, v in state.items() if k != name})
    return altered


def test_altered_states_read_as_the_mapper_reads_them(folder: Path) -> None:
    path = folder / "ledger.db"
    with ContextLedger.open(f"sqlite:///{path}", clock=Clock()) as ledger:
        ledger.open_context("alice", "t1", metadata={"a": 1}, ttl_seconds=60.0)
        ledger.open_context("alice", "t2", metadata={"b": 2})
        app = ledger._app
        first, second = stored_events(app)[:2]
        state = msgpack.unpackb(first.state, raw=False)
        other = msgpack.unpackb(second.state, raw=False)
        outcomes = []
        fast: list[bool] = []
        for altered in _altered(state, other):
            changed = StoredEvent(
                originator_id=first.originator_id,
                originator_version=first.originator_version,
                topic=first.topic,
                state=msgpack.packb(altered, use_bin_type=True),
            )
            with app.keys.reading():
                outcomes.append((read_or_error(app, changed, fast=True), altered))
                assert outcomes[-1][0] == read_or_error(app, changed, fast=False)
                fast.append(_read_fast(app, changed))
    # Some alterations are read (as stored), others refused: both paths agree,
    # and the fast decoder itself took some of them (a sealed value moved from
    # another event opens: the chain, not the decoder, finds that).
    assert any(isinstance(outcome, tuple) for outcome, _ in outcomes)
    assert any(isinstance(outcome, str) for outcome, _ in outcomes)
    assert 0 < sum(fast) < len(fast)


def _read_fast(app: LedgerApplication, stored: StoredEvent) -> bool:
    """Whether the fast decoder read the stored event (not the mapper)."""
    try:
        return app.records.read(stored).plain_json
    except (ValueError, TypeError):
        return False


def read_or_error(
    app: LedgerApplication, stored: StoredEvent, *, fast: bool
) -> tuple[object, ...] | str:
    try:
        record = app.records.read(stored) if fast else domain_record(app, stored)
    except (ValueError, TypeError) as error:
        return type(error).__name__
    return (repr(facts(record)),)  # repr: a NaN read alike is equal


def test_an_altered_state_in_the_database_reads_alike_in_views_and_history(
    durable_url: str,
) -> None:
    """A stored event altered by SQL (a ttl of the wrong type) is read by the
    mapper on every path: the history and the views show what the domain shows."""
    url = durable_url
    with ContextLedger.open(url, clock=Clock()) as ledger:
        ledger.open_context("alice", "t1", metadata={"a": 1}, ttl_seconds=60.0)
        ledger.open_context("alice", "t1", metadata={"b": 2}, ttl_seconds=60.0)
    ((state,),) = execute_sql(
        url,
        "SELECT state FROM {events} WHERE originator_version = 1",
    )
    altered = {**msgpack.unpackb(bytes(state), raw=False), "ttl_seconds": 60}
    execute_sql(
        url,
        "UPDATE {events} SET state = {p} WHERE originator_version = 1",
        (msgpack.packb(altered, use_bin_type=True),),
    )
    with ContextLedger.open(url) as ledger:
        app = ledger._app
        history = ledger.history("alice")
        assert history == [e.to_ledger_event() for e in app.events_after("alice", 0)]
        assert history[0].details["ttl_seconds"] == 60.0  # the model's float
        with app.keys.reading():
            record = app.records.read(stored_events(app)[0])
        assert not record.plain_json  # read by the mapper
    with Projections.open(url) as views:
        views.catch_up()
        rows = views.audit_rows("alice")
        assert [row.details["ttl_seconds"] for row in rows] == [60.0, 60.0]
        assert views.verify() == {"active": [], "audit": [], "continuity": []}


def test_an_event_of_an_unknown_topic_makes_history_fail_as_before(
    durable_url: str,
) -> None:
    """A stored event whose topic no class reads is damage on the fast path too,
    never left out of the history."""
    url = durable_url
    with ContextLedger.open(url, clock=Clock()) as ledger:
        ledger.open_context("alice", "t1", metadata={"a": 1})
        second = ledger.open_context("alice", "t2", metadata={"b": 2})
    execute_sql(
        url,
        "UPDATE {events} SET topic = 'ctxledger:Unknown' WHERE originator_version = 2",
    )
    with ContextLedger.open(url) as ledger:
        with pytest.raises(LedgerCorrupted, match="alice"):
            ledger.history("alice")
        with pytest.raises(LedgerCorrupted, match="alice"):
            ledger.context_history("alice", second.context_id)
