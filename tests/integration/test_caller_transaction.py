"""Commands in the caller's own PostgreSQL transaction (``connection=``): the
caller's COMMIT stores the app's row and the ledger's events together, and its
ROLLBACK leaves neither in the log, the views, a change feed or the cache; a
request id follows the transaction's outcome."""

from collections.abc import Callable, Iterator

import psycopg
import pytest

from ledger import Context, ContextLedger
from projections import Projections
from tests.caller_app import App, Connection, app_on, collect, kinds
from tests.helpers import dsn_and_schema

pytestmark = pytest.mark.postgres


@pytest.fixture
def ledger(postgres_url: str) -> Iterator[ContextLedger]:
    with ContextLedger.open(postgres_url) as opened:
        yield opened


@pytest.fixture
def app(postgres_url: str, ledger: ContextLedger) -> Iterator[App]:
    with app_on(postgres_url) as opened:
        yield opened


# One command of each kind, run on alice after her context on thread t1 was opened.
Command = Callable[[ContextLedger, Context, Connection], object]
COMMANDS: dict[str, tuple[Command, tuple[str, str]]] = {
    "open_context": (
        lambda ledger, _, c: ledger.open_context("alice", "t2", connection=c),
        ("created", "t2"),
    ),
    "update_context": (
        lambda ledger, first, c: ledger.update_context(
            "alice", first.context_id, metadata={"step": 2}, connection=c
        ),
        ("updated", "t1"),
    ),
    "clear_context": (
        lambda ledger, first, c: ledger.clear_context(
            "alice", first.context_id, connection=c
        ),
        ("cleared", "t1"),
    ),
    "clear_user": (
        lambda ledger, _, c: ledger.clear_user("alice", connection=c),
        ("cleared", "t1"),
    ),
}


@pytest.mark.parametrize("name", COMMANDS)
def test_a_commit_stores_the_apps_row_and_the_event_for_every_reader(
    postgres_url: str, ledger: ContextLedger, app: App, name: str
) -> None:
    command, (kind, thread) = COMMANDS[name]
    first = ledger.open_context("alice", "t1", metadata={"step": 1})
    position = ledger.chain_size()
    with ledger.changes() as feed, Projections.open(postgres_url) as views:
        app.insert("m1")
        command(ledger, first, app.connection)
        assert kinds(ledger.history("alice")) == [(1, "created", "t1")]  # not yet
        assert feed.poll() == []
        app.connection.commit()

        history = ledger.history("alice")
        assert kinds(history) == [(1, "created", "t1"), (2, kind, thread)]
        assert app.stored() == ["m1"]
        logged = [(position, history[0]), *collect(feed, 1)]
        assert logged[1][1] == history[1]
        views.catch_up()
        rows = views.audit_rows(user_id="alice")
        assert [(r.position, r.kind) for r in rows] == [(p, e.kind) for p, e in logged]
        assert views.active_contexts("alice") == ledger.active_contexts("alice")
    active = {c.thread_id: c for c in ledger.active_contexts("alice")}
    expected = {
        "open_context": {"t1", "t2"},
        "update_context": {"t1"},
        "clear_context": set(),
        "clear_user": set(),
    }[name]
    assert set(active) == expected
    if name == "update_context":
        assert active["t1"].metadata == {"step": 2}
    assert (ledger.get_context("alice", "t1") is None) == ("t1" not in expected)


@pytest.mark.parametrize("name", COMMANDS)
def test_a_rollback_leaves_no_trace_and_the_next_command_sees_none(
    postgres_url: str, ledger: ContextLedger, app: App, name: str
) -> None:
    command, _ = COMMANDS[name]
    first = ledger.open_context("alice", "t1", metadata={"step": 1})
    before = ledger.active_contexts("alice")
    position = ledger.chain_size()
    with ledger.changes() as feed, Projections.open(postgres_url) as views:
        app.insert("m1")
        command(ledger, first, app.connection)
        app.connection.rollback()

        assert app.stored() == []
        assert kinds(ledger.history("alice")) == [(1, "created", "t1")]
        assert ledger.active_contexts("alice") == before
        # The next normal command decides on the stored state, not on the
        # rolled-back one: the update of t1 finds it active, with step 1.
        after = ledger.update_context("alice", first.context_id, run_id="r9")
        assert after.metadata == {"step": 1}
        assert after.context_id == first.context_id
        history = ledger.history("alice")
        assert kinds(history) == [(1, "created", "t1"), (2, "updated", "t1")]
        logged = [(position, history[0]), *collect(feed, 1)]
        assert logged[1][1] == history[1]  # the rolled-back event never came
        views.catch_up()
        rows = views.audit_rows(user_id="alice")
        assert [(r.position, r.kind) for r in rows] == [(p, e.kind) for p, e in logged]
        assert views.active_contexts("alice") == ledger.active_contexts("alice")
        assert feed.poll() == []


def test_two_commands_in_one_transaction_see_each_other(
    ledger: ContextLedger, app: App
) -> None:
    opened = ledger.open_context("alice", "t1", connection=app.connection)
    updated = ledger.update_context(
        "alice", opened.context_id, metadata={"a": 1}, connection=app.connection
    )
    again = ledger.open_context("alice", "t1", connection=app.connection)
    app.connection.commit()

    assert updated.context_id == again.context_id == opened.context_id
    assert again.metadata == {"a": 1}
    assert kinds(ledger.history("alice")) == [
        (1, "created", "t1"),
        (2, "updated", "t1"),
        (3, "reused", "t1"),
    ]


def test_a_request_id_repeated_in_one_transaction_answers_the_first_call(
    ledger: ContextLedger, app: App
) -> None:
    first = ledger.open_context(
        "alice", "t1", request_id="m1", connection=app.connection
    )
    repeat = ledger.open_context(
        "alice", "t1", request_id="m1", connection=app.connection
    )
    assert repeat == first
    ledger.update_context(
        "alice", first.context_id, metadata={"a": 1}, connection=app.connection
    )
    # Later events followed the first call: the repeat answers the context as
    # the first call left it.
    late = ledger.open_context(
        "alice", "t1", request_id="m1", connection=app.connection
    )
    app.connection.commit()

    assert late == first
    assert late.metadata == {}
    assert kinds(ledger.history("alice")) == [
        (1, "created", "t1"),
        (2, "updated", "t1"),
    ]


def test_a_request_id_of_a_rolled_back_transaction_is_free_again(
    ledger: ContextLedger, app: App
) -> None:
    context = ledger.open_context("alice", "t1")
    ledger.update_context(
        "alice",
        context.context_id,
        metadata={"try": 1},
        request_id="m1",
        connection=app.connection,
    )
    app.connection.rollback()

    in_transaction = ledger.update_context(
        "alice",
        context.context_id,
        metadata={"try": 2},
        request_id="m1",
        connection=app.connection,
    )
    app.connection.rollback()
    normal = ledger.update_context(
        "alice", context.context_id, metadata={"try": 3}, request_id="m1"
    )

    assert in_transaction.metadata == {"try": 2}
    assert normal.metadata == {"try": 3}
    history = ledger.history("alice")
    assert kinds(history) == [(1, "created", "t1"), (2, "updated", "t1")]
    assert history[1].details["metadata"] == {"try": 3}


def test_a_request_id_of_a_committed_transaction_answers_its_repeats(
    ledger: ContextLedger, app: App
) -> None:
    context = ledger.open_context("alice", "t1")
    first = ledger.update_context(
        "alice",
        context.context_id,
        metadata={"try": 1},
        request_id="m1",
        connection=app.connection,
    )
    app.connection.commit()

    in_transaction = ledger.update_context(
        "alice",
        context.context_id,
        metadata={"try": 2},
        request_id="m1",
        connection=app.connection,
    )
    app.connection.commit()
    normal = ledger.update_context(
        "alice", context.context_id, metadata={"try": 3}, request_id="m1"
    )

    assert first.metadata == {"try": 1}
    assert in_transaction == first
    assert normal == first
    assert kinds(ledger.history("alice")) == [
        (1, "created", "t1"),
        (2, "updated", "t1"),
    ]


def test_feed_and_views_hold_exactly_the_committed_events_in_log_order(
    postgres_url: str, ledger: ContextLedger
) -> None:
    dsn, _ = dsn_and_schema(postgres_url)
    callers = [psycopg.connect(dsn) for _ in range(3)]
    committed: set[tuple[str, str]] = set()
    try:
        with ledger.changes() as feed, Projections.open(postgres_url) as views:
            for round_ in range(4):
                # Three transactions open at once, each on its own user; normal
                # appends go between them, so positions and commits interleave.
                for n, caller in enumerate(callers):
                    ledger.open_context(f"u{n}", f"r{round_}", connection=caller)
                    ledger.open_context(f"plain{n}", f"r{round_}")
                    committed.add((f"plain{n}", f"r{round_}"))
                for n, caller in reversed(list(enumerate(callers))):
                    if (round_ + n) % 2:
                        caller.rollback()
                    else:
                        caller.commit()
                        committed.add((f"u{n}", f"r{round_}"))
            ledger.open_context("plain0", "last")
            committed.add(("plain0", "last"))

            changes = collect(feed, len(committed))
            views.catch_up()
            rows = views.audit_rows()
            assert feed.poll() == []
    finally:
        for caller in callers:
            caller.close()

    positions = [position for position, _ in changes]
    assert positions == sorted(set(positions))
    seen = [(event.user_id, event.thread_id) for _, event in changes]
    assert sorted(seen) == sorted(committed)
    assert [(r.position, r.user_id, r.thread_id) for r in rows] == [
        (p, e.user_id, e.thread_id) for p, e in changes
    ]
    for user in ("u0", "u1", "u2", "plain0", "plain1", "plain2"):
        versions = [e.version for _, e in changes if e.user_id == user]
        assert versions == list(range(1, len(versions) + 1))


def test_a_new_users_first_event_rolled_back_leaves_a_key_that_verifies(
    postgres_url: str,
) -> None:
    # The user's data key is made in the ledger's own transaction, before the
    # event that is sealed with it: a rollback leaves the key without events.
    with (
        ContextLedger.open(postgres_url, master_key="7f" * 32) as ledger,
        app_on(postgres_url) as app,
    ):
        ledger.open_context(
            "newcomer", "t", metadata={"plan": "pro"}, connection=app.connection
        )
        app.connection.rollback()

        assert ledger.verify_chain().holds
        again = ledger.open_context("newcomer", "t", metadata={"plan": "free"})
        assert again.metadata == {"plan": "free"}
        assert kinds(ledger.history("newcomer")) == [(1, "created", "t")]
        assert ledger.verify_chain().holds


def test_a_rolled_back_append_replaced_by_another_writers_is_never_built_on(
    postgres_url: str,
) -> None:
    # The ledger keeps the state its last append in a caller's transaction left,
    # and the next such command first tries that state, requiring that very
    # event in the store. After a rollback and another writer's event at the
    # same version, it must decide on the stored one instead.
    with (
        ContextLedger.open(postgres_url) as ledger,
        ContextLedger.open(postgres_url) as elsewhere,
        app_on(postgres_url) as app,
    ):
        first = ledger.open_context("alice", "t1", metadata={"n": 1})
        ledger.update_context(
            "alice", first.context_id, metadata={"n": 2}, connection=app.connection
        )
        app.connection.rollback()
        elsewhere.update_context("alice", first.context_id, metadata={"n": 3})

        after = ledger.update_context(
            "alice", first.context_id, run_id="r", connection=app.connection
        )
        app.connection.commit()

        assert after.metadata == {"n": 3}
        assert kinds(ledger.history("alice")) == [
            (1, "created", "t1"),
            (2, "updated", "t1"),
            (3, "updated", "t1"),
        ]
        assert [e.details["metadata"] for e in ledger.history("alice")[1:]] == [
            {"n": 3},
            {},
        ]
        assert ledger.verify_chain().holds
