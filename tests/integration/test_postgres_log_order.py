"""On PostgreSQL writers append in parallel (no table lock), and every reader of the
log stops at its safe head: an event that commits late is neither skipped nor read
twice, whether its writer commits, is killed or has its backend terminated."""

import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, Literal

import pytest
from eventsourcing.persistence import StoredEvent

from ledger import ContextLedger, StorageUnavailable
from ledger._domain.contexts import user_aggregate_id
from ledger._store.application import open_application
from ledger._store.backends import safe_head
from ledger._store.postgres_log import (
    AppendOutcomeUnknown,
    ParallelPostgresRecorder,
    SafeHeadTimeout,
)
from ledger._store.urls import storage_for
from projections import Projections
from tests.helpers import (
    appends_held,
    dsn_and_schema,
    held_backend,
    raw_connection,
    wait_until,
)
from tests.tampering import execute_sql

pytestmark = pytest.mark.postgres

EVENTS = "ctxledger_events"
WORKERS = 4
APPENDS_PER_WORKER = 120
WAIT_SECONDS = 60


def _stored_ids(url: str) -> list[int]:
    return [row[0] for row in execute_sql(url, "SELECT {log} FROM {events} ORDER BY 1")]


def _delay_every_append(url: str, most_ms: int) -> None:
    """Each append waits up to ``most_ms`` between drawing its ids and committing,
    as an application's own work would; so commits come out of id order."""
    _, schema = dsn_and_schema(url)
    with raw_connection(url) as connection:
        connection.execute(
            f'CREATE OR REPLACE FUNCTION "{schema}".dawdle() RETURNS trigger '
            "LANGUAGE plpgsql AS $$ BEGIN "
            f"PERFORM pg_sleep(random() * {most_ms / 1000}); RETURN NULL; END $$"
        )
        connection.execute(
            f'CREATE OR REPLACE TRIGGER dawdle AFTER INSERT ON "{schema}".{EVENTS} '
            f'FOR EACH STATEMENT EXECUTE FUNCTION "{schema}".dawdle()'
        )


class _Background(threading.Thread):
    """Runs a call in a thread and keeps its result or its error."""

    def __init__(self, call: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self._call = call
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self._call()
        except BaseException as error:  # noqa: BLE001  (asserted by the test)
            self.error = error

    def outcome(self) -> Any:
        self.join(WAIT_SECONDS)
        assert not self.is_alive(), "the call did not end"
        if self.error is not None:
            raise self.error
        return self.result


def _assert_views_equal_the_log(url: str) -> None:
    with Projections.open(url) as views:
        views.catch_up()
        assert views.verify() == {"active": [], "audit": [], "continuity": []}
        assert [row.position for row in views.audit_rows()] == _stored_ids(url)


def test_postgres_urls_choose_the_recorder_without_a_table_lock(
    postgres_url: str,
) -> None:
    with ContextLedger.open(postgres_url) as ledger:
        recorder = ledger._app.recorder

    assert isinstance(recorder, ParallelPostgresRecorder)


def test_an_empty_log_has_a_safe_head_of_zero(postgres_url: str) -> None:
    with open_application(storage_for(postgres_url)) as app:
        assert safe_head(app.recorder) == 0


def test_the_safe_head_is_the_last_event_stored_when_no_writer_is_open(
    postgres_url: str,
) -> None:
    with ContextLedger.open(postgres_url) as ledger:
        ledger.open_context("alice", "t")
        ledger.open_context("bob", "t")
        execute_sql(  # ids drawn and never used, as by rolled-back writes
            postgres_url,
            "SELECT nextval(pg_get_serial_sequence('{events}', 'notification_id')) "
            "FROM generate_series(1, 3)",
        )

        assert safe_head(ledger._app.recorder) == 2


def test_readers_refuse_a_notification_sequence_that_caches_ids(
    postgres_url: str,
) -> None:
    with ContextLedger.open(postgres_url) as ledger:
        ledger.open_context("alice", "t")
    execute_sql(postgres_url, "ALTER SEQUENCE {events}_notification_id_seq CACHE 5")

    with (
        Projections.open(postgres_url) as views,
        pytest.raises(StorageUnavailable, match="has CACHE 5; readers of the log need"),
    ):
        views.catch_up()


def test_the_safe_head_stops_short_of_a_writer_that_has_not_committed(
    postgres_url: str, application_name: str
) -> None:
    with (
        ContextLedger.open(postgres_url) as ledger,
        ContextLedger.open(postgres_url) as late,
    ):
        ledger.open_context("alice", "t")
        with appends_held(postgres_url, "zed"):
            held = _Background(lambda: late.open_context("zed", "t"))
            held.start()
            pid = held_backend(postgres_url, application_name)
            ledger.open_context("bob", "t")  # a later id, committed first

            with pytest.raises(
                SafeHeadTimeout, match=f"pid {pid} .*{application_name}"
            ):
                safe_head(ledger._app.recorder, timeout=0.2)
        held.outcome()

        assert safe_head(ledger._app.recorder) == 3


@pytest.mark.parametrize(
    ("stage", "ending"),
    [
        ("inserting", "commits"),
        ("inserting", "is terminated"),  # the append is tried again
        ("committing", "is terminated"),  # the append's id is never used
    ],
)
def test_views_wait_for_a_writer_that_commits_late_and_apply_each_event_once(
    postgres_url: str,
    application_name: str,
    stage: Literal["inserting", "committing"],
    ending: str,
) -> None:
    with (
        ContextLedger.open(postgres_url) as ledger,
        ContextLedger.open(postgres_url) as late,
        Projections.open(postgres_url) as views,
    ):
        ledger.open_context("alice", "t")
        views.catch_up()
        with appends_held(postgres_url, "zed", stage=stage):
            held = _Background(lambda: late.open_context("zed", "t"))
            held.start()
            pid = held_backend(postgres_url, application_name)
            ledger.open_context("bob", "t")
            catching_up = _Background(views.catch_up)
            catching_up.start()
            catching_up.join(0.3)

            assert catching_up.is_alive()  # waiting, not passing the held id
            assert views.count_audit() == 1
            if ending == "is terminated":
                with raw_connection(postgres_url) as admin:
                    admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        catching_up.outcome()
        try:
            held.outcome()
        except StorageUnavailable:
            assert stage == "committing"  # its outcome was unknown to the writer

    _assert_views_equal_the_log(postgres_url)


def test_an_append_commits_while_another_is_held_open_and_takes_no_table_lock(
    postgres_url: str, application_name: str
) -> None:
    _, schema = dsn_and_schema(postgres_url)
    with (
        ContextLedger.open(postgres_url) as ledger,
        ContextLedger.open(postgres_url) as late,
    ):
        ledger.open_context("alice", "t")
        with appends_held(postgres_url, "zed"):
            held = _Background(lambda: late.open_context("zed", "t"))
            held.start()
            pid = held_backend(postgres_url, application_name)
            with raw_connection(postgres_url) as admin:
                modes = admin.execute(
                    "SELECT mode FROM pg_locks "
                    "WHERE pid = %s AND relation = %s::regclass",
                    (pid, f'"{schema}".{EVENTS}'),
                ).fetchall()
            free = _Background(lambda: ledger.open_context("bob", "t"))
            free.start()

            free.outcome()  # committed while the held append is still open
            assert held.is_alive()
        held.outcome()

    assert modes == [("RowExclusiveLock",)]


@pytest.mark.parametrize("stage", ["inserting", "committing"])
def test_an_append_whose_backend_dies_reports_an_unknown_outcome(
    postgres_url: str, application_name: str, stage: Literal["inserting", "committing"]
) -> None:
    stream = user_aggregate_id("zed")
    event = StoredEvent(stream, 1, "ctxledger.test:Anything", b"\x80")
    with open_application(storage_for(postgres_url)) as app:
        with appends_held(postgres_url, "zed", stage=stage):
            insert = _Background(lambda: app.recorder.insert_events([event]))
            insert.start()
            pid = held_backend(postgres_url, application_name)
            with raw_connection(postgres_url) as admin:
                admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
            insert.join(10)

            assert not insert.is_alive()  # not tried again: that would wait again
        with pytest.raises(AppendOutcomeUnknown, match="terminat"):
            insert.outcome()

        assert app.recorder.select_events(stream) == []  # read on a new connection


@pytest.mark.parametrize("stage", ["inserting", "committing"])
def test_a_call_whose_backend_dies_mid_append_is_applied_once(
    postgres_url: str, application_name: str, stage: Literal["inserting", "committing"]
) -> None:
    with ContextLedger.open(postgres_url) as ledger:
        ledger.open_context("zed", "t1")
        with appends_held(postgres_url, "zed", stage=stage):
            call = _Background(lambda: ledger.open_context("zed", "t2"))
            call.start()
            first = held_backend(postgres_url, application_name)
            with raw_connection(postgres_url) as admin:
                admin.execute("SELECT pg_terminate_backend(%s, 5000)", (first,))
            second = held_backend(postgres_url, application_name)  # the settling put
        context = call.outcome()
        kinds = [event.kind for event in ledger.history("zed")]
        found = ledger.get_context("zed", "t2")

    assert second != first
    assert kinds == ["created", "created"]
    assert found == context


def test_a_write_after_the_server_closed_the_pooled_connections_succeeds(
    postgres_url: str, application_name: str
) -> None:
    with ContextLedger.open(postgres_url) as ledger:
        ledger.open_context("alice", "t")
        with raw_connection(postgres_url) as admin:
            closed = admin.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity "
                "WHERE application_name = %s AND pid <> pg_backend_pid()",
                (application_name,),
            ).fetchall()

        reused = ledger.open_context("alice", "t")

    assert closed
    assert reused.reuse_count == 1


def _append_many(url: str, worker: int, appends: int, start: Any) -> int:
    """A writer process: opens and reuses contexts of users of its own, once every
    writer is ready (``start`` is a barrier)."""
    with ContextLedger.open(url) as ledger:
        start.wait(WAIT_SECONDS)
        for n in range(appends):
            ledger.open_context(f"w{worker}-u{n % 7}", f"t{n % 3}", run_id=f"r{n}")
    return appends


@pytest.mark.slow
def test_writer_processes_in_parallel_and_a_follower_see_every_event_once(
    postgres_url: str,
) -> None:
    with ContextLedger.open(postgres_url):
        pass  # the tables exist before the writers race
    _delay_every_append(postgres_url, most_ms=20)
    heads: list[int] = []
    stop = threading.Event()
    with Projections.open(postgres_url) as views:
        follower = _Background(
            lambda: views.follow(
                stop, poll_seconds=0.005, on_batch=lambda _: heads.append(views.head())
            )
        )
        follower.start()
        context = multiprocessing.get_context("spawn")
        with context.Manager() as manager, context.Pool(WORKERS) as pool:
            start = manager.Barrier(WORKERS + 1)
            writing = pool.starmap_async(
                _append_many,
                [(postgres_url, w, APPENDS_PER_WORKER, start) for w in range(WORKERS)],
            )
            start.wait(WAIT_SECONDS)  # all writers append at once from here
            done = writing.get(timeout=300)
        time.sleep(0.1)
        stop.set()
        follower.outcome()

    assert sum(done) == len(_stored_ids(postgres_url)) == WORKERS * APPENDS_PER_WORKER
    assert len(heads) > WORKERS  # it caught up many times during the run
    assert heads == sorted(heads)  # the head never went back
    _assert_views_equal_the_log(postgres_url)


def _append_until_killed(url: str, writer: int, start: Any) -> None:
    with ContextLedger.open(url) as ledger:
        start.wait(WAIT_SECONDS)
        for n in range(1_000_000):
            ledger.open_context(f"k{writer}-u{n % 11}", f"t{n % 2}")


@pytest.mark.slow
def test_writers_killed_mid_run_leave_views_equal_to_a_replay(
    postgres_url: str,
) -> None:
    with ContextLedger.open(postgres_url) as ledger:
        ledger.open_context("alice", "t")
    _delay_every_append(postgres_url, most_ms=20)
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, Projections.open(postgres_url) as views:
        start = manager.Barrier(3)
        writers = [
            context.Process(target=_append_until_killed, args=(postgres_url, w, start))
            for w in range(2)
        ]
        for writer in writers:
            writer.start()
        try:
            start.wait(WAIT_SECONDS)
            for writer in writers:  # each killed while the other goes on writing
                _progress(views, by=250)
                os.kill(writer.pid or 0, signal.SIGKILL)
                writer.join(WAIT_SECONDS)
            views.catch_up()
        finally:
            for writer in writers:
                writer.kill()

    assert [writer.exitcode for writer in writers] == [-signal.SIGKILL] * 2
    _assert_views_equal_the_log(postgres_url)


def _progress(views: Projections, by: int) -> None:
    """Catches up until the log's head has moved ``by`` positions."""
    target = views.head() + by
    wait_until(lambda: views.catch_up() and views.head() > target, "writes")
