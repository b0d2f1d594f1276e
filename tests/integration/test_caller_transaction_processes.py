"""Callers whose transactions write one user at once: the later writer waits for
the earlier transaction and then follows its outcome, never applied out of order;
a caller killed with its transaction open leaves nothing, and readers go on."""

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, Literal

import psycopg
import pytest

from ledger import ContextLedger
from projections import Projections
from tests.caller_app import App, app_on, collect, kinds
from tests.helpers import dsn_and_schema, raw_connection, wait_until

pytestmark = pytest.mark.postgres

Outcome = Literal["commit", "rollback"]
JOIN_SECONDS = 60.0

# Opens a transaction, inserts the app's row and opens dave's context in it,
# says so, then holds the transaction open until it is killed.
CALLER = """
import sys, time
import psycopg
from ledger import ContextLedger
url, dsn, schema = sys.argv[1:4]
with ContextLedger.open(url) as ledger, psycopg.connect(dsn) as connection:
    connection.execute(f'INSERT INTO "{schema}".messages (id) VALUES (%s)', ("m1",))
    ledger.open_context("dave", "killed", connection=connection)
    print("open", connection.info.backend_pid, flush=True)
    time.sleep(600)
"""


@pytest.fixture
def ledger(postgres_url: str, application_name: str) -> Iterator[ContextLedger]:
    with ContextLedger.open(postgres_url) as opened:
        yield opened


@pytest.fixture
def app(postgres_url: str, ledger: ContextLedger) -> Iterator[App]:
    with app_on(postgres_url) as opened:
        yield opened


class Call(threading.Thread):
    """A command in a thread: its result, or what it raised."""

    def __init__(self, call: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self._call = call
        self.result: Any = None
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._call()
        except BaseException as error:  # noqa: BLE001  # reported by the test
            self.failure = error

    def finished(self) -> Any:
        self.join(JOIN_SECONDS)
        assert not self.is_alive(), "the call never returned"
        if self.failure is not None:
            raise self.failure
        return self.result


def waits_on_a_lock(url: str, application_name: str) -> bool:
    """Whether a backend of the ledger (this test's application name) waits on
    a lock: an append blocked by another transaction's row of the same key."""
    with raw_connection(url) as connection:
        rows = connection.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = %s AND wait_event_type = 'Lock'",
            (application_name,),
        ).fetchall()
    return bool(rows[0][0])


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_a_second_callers_command_waits_for_the_first_transaction_then_follows_it(
    postgres_url: str,
    ledger: ContextLedger,
    app: App,
    application_name: str,
    outcome: Outcome,
) -> None:
    dsn, _ = dsn_and_schema(postgres_url)
    app.insert("first")
    ledger.open_context("bob", "first", connection=app.connection)
    with psycopg.connect(dsn, application_name=application_name) as second:
        call = Call(lambda: ledger.open_context("bob", "second", connection=second))
        call.start()
        wait_until(
            lambda: waits_on_a_lock(postgres_url, application_name),
            "the second caller's append to wait",
        )
        assert call.is_alive()  # it has not returned while the first is open

        getattr(app.connection, outcome)()
        opened = call.finished()
        second.commit()

    expected = [(1, "created", "first"), (2, "created", "second")]
    if outcome == "rollback":
        expected = [(1, "created", "second")]
    assert kinds(ledger.history("bob")) == expected
    assert ledger.get_context("bob", "second") == opened


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_a_normal_call_waits_for_a_callers_transaction_then_takes_the_next_version(
    postgres_url: str,
    ledger: ContextLedger,
    app: App,
    application_name: str,
    outcome: Outcome,
) -> None:
    ledger.open_context("carol", "before")
    ledger.open_context("carol", "caller", connection=app.connection)
    call = Call(lambda: ledger.open_context("carol", "normal"))
    call.start()
    wait_until(
        lambda: waits_on_a_lock(postgres_url, application_name),
        "the normal call's append to wait",
    )
    assert call.is_alive()

    getattr(app.connection, outcome)()
    opened = call.finished()

    expected = [
        (1, "created", "before"),
        (2, "created", "caller"),
        (3, "created", "normal"),
    ]
    if outcome == "rollback":
        expected = [(1, "created", "before"), (2, "created", "normal")]
    assert kinds(ledger.history("carol")) == expected
    assert ledger.get_context("carol", "normal") == opened


def test_a_caller_killed_with_its_transaction_open_leaves_nothing(
    postgres_url: str, ledger: ContextLedger, app: App
) -> None:
    dsn, schema = dsn_and_schema(postgres_url)
    with ledger.changes() as feed, Projections.open(postgres_url) as views:
        caller = subprocess.Popen(  # our own script
            [sys.executable, "-c", CALLER, postgres_url, dsn, schema],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert caller.stdout is not None
            line = caller.stdout.readline()
            assert line.startswith("open"), line
            ledger.open_context("erin", "meanwhile")  # after the caller's event
        finally:
            os.kill(caller.pid, signal.SIGKILL)
            caller.wait(JOIN_SECONDS)
            if caller.stdout is not None:
                caller.stdout.close()

        after = ledger.open_context("dave", "after")
        changes = collect(feed, 2)
        views.catch_up()

        assert app.stored() == []
        assert kinds(ledger.history("dave")) == [(1, "created", "after")]
        assert [(e.user_id, e.thread_id) for _, e in changes] == [
            ("erin", "meanwhile"),
            ("dave", "after"),
        ]
        assert [(r.position, r.thread_id) for r in views.audit_rows()] == [
            (p, e.thread_id) for p, e in changes
        ]
        assert views.active_contexts("dave") == [after]
        assert feed.poll() == []
