"""Views under stored values, arguments and database failures that once stalled,
misled or stopped them: each view holds what the ledger holds, names the event it
cannot apply, refuses bad arguments, and a follower outlives its connections."""

import contextlib
import os
import queue
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ledger import ContextLedger
from ledger.store.application import open_application
from ledger.store.urls import storage_for
from projections import Projections, UnknownView, ViewCannotApply
from tests.helpers import (
    CTXLEDGER,
    append_update_of_a_context_never_opened,
    execute_sql,
    run,
)

EQUAL: dict[str, list[str]] = {"active": [], "audit": [], "continuity": []}
NUL_METADATA = {"note": "before\x00after", "key\x00": 1, "list": ["\x00"]}


@pytest.fixture
def ledger(durable_url: str) -> Iterator[ContextLedger]:
    with ContextLedger.open(durable_url) as opened:
        yield opened


@pytest.fixture
def views(durable_url: str, ledger: ContextLedger) -> Iterator[Projections]:
    with Projections.open(durable_url) as opened:
        yield opened


def store_as_an_older_release(url: str, user_id: str) -> None:
    """Stores what releases before NUL characters were refused accepted: one
    context with NUL in its metadata (left open) and one cleared with NUL in its
    reason, through the event store's application, without the API's checks."""
    application = open_application(storage_for(url))
    try:
        now = datetime.now(tz=UTC)
        aggregate = application.load(user_id, now)
        options: dict[str, Any] = {
            "run_id": None,
            "ttl_seconds": None,
            "default_ttl_seconds": None,
            "now": now,
            "limit": 100,
        }
        aggregate.open("t1", metadata=NUL_METADATA, **options)
        ended = aggregate.open("t2", metadata={}, **options)
        aggregate.clear(ended.context_id, reason="bye\x00", now=now)
        application.record(aggregate)
    finally:
        application.close()


# Values that any release could store.


def test_views_hold_nul_characters_in_metadata_and_reasons_as_the_ledger_does(
    durable_url: str, ledger: ContextLedger, views: Projections
) -> None:
    store_as_an_older_release(durable_url, "alice")

    applied = views.catch_up()

    assert applied == {"active": 3, "audit": 3, "continuity": 3}
    assert views.active_contexts("alice") == ledger.active_contexts("alice")
    assert views.active_contexts("alice")[0].metadata == NUL_METADATA
    assert [row.details for row in views.audit_rows("alice")] == [
        event.details for event in ledger.history("alice")
    ]
    assert views.verify() == EQUAL


def test_a_rebuild_holds_nul_characters_as_the_ledger_does(
    durable_url: str, ledger: ContextLedger, views: Projections
) -> None:
    store_as_an_older_release(durable_url, "alice")

    applied = views.rebuild()

    assert applied == {"active": 3, "audit": 3, "continuity": 3}
    assert views.audit_rows("alice")[-1].details["reason"] == "bye\x00"
    assert views.verify() == EQUAL


def test_views_keep_numbers_in_metadata_as_written(
    ledger: ContextLedger, views: Projections
) -> None:
    numbers = {"huge": 1e308, "whole": 1e16, "tiny": 5e-324, "int": 2**63 - 1}
    ledger.open_context("alice", "t1", metadata=numbers)

    views.catch_up()

    stored = views.active_contexts("alice")[0].metadata
    assert [(value, type(value)) for value in stored.values()] == [
        (value, type(value)) for value in numbers.values()
    ]
    assert views.verify() == EQUAL


@pytest.mark.postgres
def test_an_older_jsonb_view_names_what_it_cannot_hold_and_a_rebuild_repairs_it(
    postgres_url: str,
) -> None:
    """Views built by an older release keep jsonb columns until rebuilt."""
    with (
        ContextLedger.open(postgres_url) as ledger,
        Projections.open(postgres_url) as views,
    ):
        ledger.open_context("bob", "t1")
        views.catch_up()
        execute_sql(
            postgres_url,
            "ALTER TABLE ctxl_audit ALTER COLUMN details TYPE jsonb "
            "USING details::jsonb",
        )
        ledger.open_context("carol", "t1", metadata={"a": 1})
        store_as_an_older_release(postgres_url, "alice")

        with pytest.raises(ViewCannotApply) as raised:
            views.catch_up()
        positions = [status.position for status in views.status()]
        carol = [row.details for row in views.audit_rows("carol")]
        views.rebuild(["audit"])

        # Metadata is sealed in the view (no NUL reaches jsonb); the clear's
        # reason, at position 5, is not.
        assert (raised.value.view, raised.value.position) == ("audit", 5)
        assert raised.value.user_id == "alice"
        assert "\\u0000" in raised.value.cause
        assert positions == [5, 4, 5]
        assert carol == [event.details for event in ledger.history("carol")]
        assert views.verify() == EQUAL


# A view that cannot apply an event.


def lose_alices_active_row(url: str, ledger: ContextLedger, views: Projections) -> None:
    """Positions 1-2 applied; alice's row is then deleted from the active view
    behind its back, so her update at position 4 (between carol's and dave's
    events) contradicts the view."""
    context = ledger.open_context("alice", "t1")
    ledger.open_context("bob", "t1")
    views.catch_up()
    execute_sql(url, "DELETE FROM ctxl_active_contexts WHERE user_id = 'alice'")
    ledger.open_context("carol", "t1")
    ledger.update_context("alice", context.context_id, metadata={"n": 1})
    ledger.open_context("dave", "t1")


def test_a_view_that_cannot_apply_an_event_names_the_view_position_user_and_cause(
    durable_url: str, ledger: ContextLedger, views: Projections
) -> None:
    lose_alices_active_row(durable_url, ledger, views)

    with pytest.raises(ViewCannotApply) as raised:
        views.catch_up()

    error = raised.value
    assert (error.view, error.position, error.user_id) == ("active", 4, "alice")
    assert error.cause.startswith("ValueError: ContextUpdated of context")
    assert str(error).startswith(
        "the active view cannot apply the event at position 4 (user 'alice'): "
        "ValueError: ContextUpdated of context"
    )
    assert "ctxledger rebuild active" in str(error)


def test_the_events_before_the_culprit_and_the_other_views_go_on(
    durable_url: str, ledger: ContextLedger, views: Projections
) -> None:
    lose_alices_active_row(durable_url, ledger, views)

    with pytest.raises(ViewCannotApply):
        views.catch_up()

    assert [status.position for status in views.status()] == [3, 5, 5]


def test_a_rebuild_that_cannot_apply_an_event_names_it_and_keeps_the_live_view(
    durable_url: str, ledger: ContextLedger, views: Projections
) -> None:
    ledger.open_context("alice", "t1")
    views.catch_up()
    append_update_of_a_context_never_opened(durable_url, "mallory")
    live = views.active_contexts()

    with pytest.raises(ViewCannotApply) as raised:
        views.rebuild(["active"])

    assert (raised.value.view, raised.value.position) == ("active", 2)
    assert raised.value.user_id == "mallory"
    assert views.active_contexts() == live


def test_a_rebuild_names_an_event_it_cannot_apply_among_the_last_ones(
    durable_url: str, ledger: ContextLedger, views: Projections
) -> None:
    ledger.open_context("alice", "t1")
    ledger.open_context("bob", "t1")
    views.catch_up()
    appended: list[int] = []

    def append_once(_: int) -> None:
        if not appended:  # after the rebuild read up to the head it began with
            append_update_of_a_context_never_opened(durable_url, "mallory")
            appended.append(views.head())

    with pytest.raises(ViewCannotApply) as raised:
        views.rebuild(["active"], on_batch=append_once)

    assert (raised.value.view, raised.value.position) == ("active", appended[0])
    assert raised.value.user_id == "mallory"
    assert views.status()[0].position == 2


def test_project_prints_the_event_a_view_cannot_apply_and_exits_1(
    durable_url: str, ledger: ContextLedger, views: Projections, tmp_path: Path
) -> None:
    lose_alices_active_row(durable_url, ledger, views)

    result = run("--db", durable_url, "project", cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.strip().startswith(
        "ViewCannotApply: the active view cannot apply the event at position 4 "
        "(user 'alice'): ValueError: "
    )
    assert "check that the database is running" not in result.stderr


def test_a_follower_stops_on_an_event_a_view_cannot_apply(
    durable_url: str, ledger: ContextLedger, views: Projections, tmp_path: Path
) -> None:
    lose_alices_active_row(durable_url, ledger, views)

    result = run("--db", durable_url, "project", "--follow", cwd=tmp_path)

    assert result.returncode == 1
    assert "ViewCannotApply: the active view cannot apply the event at position 4" in (
        result.stderr
    )


# Verify and views behind the head.


def test_verify_reports_a_view_behind_the_head_as_a_difference(
    ledger: ContextLedger, views: Projections
) -> None:
    ledger.open_context("alice", "t1")
    views.catch_up()
    ledger.open_context("alice", "t2")
    ledger.open_context("bob", "t1")

    found = views.verify()

    assert found["audit"] == [
        "behind the ledger by 2 event(s): at position 1, the head is 3; run "
        "`ctxledger project` (if it stops, its error names the event)"
    ]


def test_verify_of_a_view_stuck_before_an_event_exits_1_saying_it_is_behind(
    durable_url: str, ledger: ContextLedger, views: Projections, tmp_path: Path
) -> None:
    lose_alices_active_row(durable_url, ledger, views)
    run("--db", durable_url, "project", cwd=tmp_path)

    result = run("--db", durable_url, "verify", cwd=tmp_path)

    assert result.returncode == 1
    assert "active: DIFFERS" in result.stdout
    assert "  behind the ledger by 2 event(s): at position 3, the head is 5" in (
        result.stdout
    )
    assert "audit: equal to the replay" in result.stdout


# Arguments of the queries.

BAD_IDS: list[object] = ["\udcff", 5, "", " alice", "none", "a\x00b", "x" * 257, b"a"]
QUERIES: dict[str, Callable[[Projections, Any], object]] = {
    "active_context": lambda views, bad: views.active_context(bad),
    "active_contexts": lambda views, bad: views.active_contexts(bad),
    "count_active": lambda views, bad: views.count_active(bad),
    "audit_rows": lambda views, bad: views.audit_rows(bad),
    "continuity": lambda views, bad: views.continuity(bad),
}


def _raised(call: Callable[[Any], object], values: list[object]) -> dict[str, str]:
    """What each value raised (the error's type name, or "nothing")."""
    raised: dict[str, str] = {}
    for bad in values:
        try:
            call(bad)
        except Exception as error:  # noqa: BLE001  (any error is recorded)
            raised[repr(bad)] = type(error).__name__
        else:
            raised[repr(bad)] = "nothing"
    return raised


@pytest.mark.parametrize("query", QUERIES)
def test_every_id_argument_of_a_query_is_checked_as_the_ledger_checks_it(
    views: Projections, query: str
) -> None:
    raised = _raised(lambda bad: QUERIES[query](views, bad), BAD_IDS)

    assert raised == {repr(bad): "InvalidContextInput" for bad in BAD_IDS}


BAD_TIMES: list[object] = [
    datetime(2026, 1, 1),  # noqa: DTZ001  (naive on purpose)
    "2026-01-01T00:00:00Z",
    datetime(2026, 1, 1, tzinfo=UTC).date(),
    1767225600,
    datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=5))),
    datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-5))),
]
TIME_QUERIES: dict[str, Callable[[Projections, Any], object]] = {
    "expiring_before": lambda views, at: views.expiring_before(at),
    "audit_rows since": lambda views, at: views.audit_rows(since=at),
    "audit_rows until": lambda views, at: views.audit_rows(until=at),
}


@pytest.mark.parametrize("query", TIME_QUERIES)
def test_every_time_argument_of_a_query_is_checked_as_the_ledger_checks_it(
    views: Projections, query: str
) -> None:
    raised = _raised(lambda bad: TIME_QUERIES[query](views, bad), BAD_TIMES)

    assert raised == {repr(bad): "InvalidContextInput" for bad in BAD_TIMES}


def test_the_first_and_last_instants_and_odd_offsets_are_answered(
    ledger: ContextLedger, views: Projections
) -> None:
    ledger.open_context("alice", "t1", ttl_seconds=60)
    views.catch_up()
    odd = timezone(-timedelta(hours=23, minutes=59, seconds=59, microseconds=999999))
    first = datetime.min.replace(tzinfo=UTC)
    last = datetime.max.replace(tzinfo=UTC)

    assert len(views.expiring_before(last)) == 1
    assert views.expiring_before(first) == []
    assert len(views.audit_rows(since=first, until=last)) == 1
    assert views.audit_rows(until=datetime(1, 1, 1, 12, tzinfo=odd)) == []


def test_a_limit_beyond_what_a_64_bit_limit_counts_means_no_limit(
    ledger: ContextLedger, views: Projections
) -> None:
    ledger.open_context("alice", "t1")
    views.catch_up()

    everyone = views.active_contexts(limit=2**70)
    alices = views.active_contexts("alice", limit=2**70)

    assert len(everyone) == len(alices) == 1


def test_view_names_are_checked_and_one_name_may_be_given_alone(
    ledger: ContextLedger, views: Projections
) -> None:
    ledger.open_context("alice", "t1")

    assert views.catch_up("audit") == {"audit": 1}
    with pytest.raises(UnknownView):
        views.catch_up([5])  # type: ignore[list-item]
    with pytest.raises(UnknownView):
        views.verify([["audit"]])  # type: ignore[list-item]


# A follower whose database fails.


class Follower:
    """``ctxledger project --follow`` as a process of its own; its stderr lines
    are collected as they come."""

    def __init__(self, url: str, cwd: Path, application_name: str = "") -> None:
        environment = {k: v for k, v in os.environ.items() if k != "CTXLEDGER_URL"}
        if application_name:
            environment["PGAPPNAME"] = application_name  # names its backends
        self.process = subprocess.Popen(
            [CTXLEDGER, "--db", url, "project", "--follow"],
            cwd=cwd,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._arrived: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        if self.process.stderr is not None:
            for line in self.process.stderr:
                self._arrived.put(line.rstrip("\n"))

    def _collect(self, timeout: float) -> None:
        with contextlib.suppress(queue.Empty):
            self.lines.append(self._arrived.get(timeout=timeout))
        while not self._arrived.empty():
            self.lines.append(self._arrived.get_nowait())

    def wait_for_line(self, part: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.lines:
                if part in line:
                    return line
            self._collect(min(0.1, max(deadline - time.monotonic(), 0.0)))
        msg = f"no line with {part!r} on stderr in {timeout} s: {self.lines}"
        raise AssertionError(msg)

    def failures(self) -> list[str]:
        self._collect(0)
        return [line for line in self.lines if "trying again in" in line]

    def stop(self, timeout: float = 10) -> tuple[int, str]:
        """SIGTERM; its exit status and stdout (waits at most ``timeout`` s)."""
        self.process.send_signal(signal.SIGTERM)
        status = self.process.wait(timeout)
        self._reader.join(timeout)
        self._collect(0)
        stdout = self.process.stdout.read() if self.process.stdout else ""
        return status, stdout

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@contextlib.contextmanager
def following(url: str, cwd: Path, application_name: str = "") -> Iterator[Follower]:
    follower = Follower(url, cwd, application_name)
    try:
        follower.wait_for_line("following ")
        yield follower
    finally:
        follower.close()


def terminate_backends(dsn: str, application_name: str) -> int:
    """Ends the server sessions of one test's follower (and no one else's)."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        rows = connection.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()",
            (application_name,),
        ).fetchall()
    return sum(1 for (ended,) in rows if ended)


@pytest.mark.postgres
def test_a_follower_goes_on_after_its_postgresql_backends_are_terminated(
    postgres_url: str, tmp_path: Path
) -> None:
    # More pooled connections than reading the log's head tries (10), so ending
    # them all makes the follower itself meet the failure.
    url = f"{postgres_url}&pool_size=12"
    name = f"ctxl_test_follower_{uuid.uuid4().hex[:12]}"
    terminated = 0
    with (
        ContextLedger.open(postgres_url) as ledger,
        following(url, tmp_path, name) as follower,
        Projections.open(postgres_url, create=False) as views,
    ):
        ledger.open_context("alice", "t0")
        views.wait(views.head(), timeout=20)
        for round_ in range(1, 6):
            terminated += terminate_backends(postgres_url.partition("?")[0], name)
            ledger.open_context("alice", f"t{round_}")
            views.wait(views.head(), timeout=30)
            if follower.failures():
                break
        head = views.head()
        status, stdout = follower.stop()

    assert terminated >= 1
    assert follower.failures()
    assert all(
        line.startswith("StorageUnavailable: ") and "administrator command" in line
        for line in follower.failures()
    )
    assert (status, stdout) == (0, f"stopped at position {head}\n")


def test_a_follower_goes_on_after_its_sqlite_file_was_locked(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with (
        ContextLedger.open(f"sqlite:///{path}") as ledger,
        following(f"sqlite:///{path}?timeout=1", tmp_path) as follower,
        Projections.open(f"sqlite:///{path}", create=False) as views,
    ):
        ledger.open_context("alice", "t1")
        views.wait(views.head(), timeout=20)
        follower.process.send_signal(signal.SIGSTOP)  # so it cannot apply yet
        ledger.open_context("bob", "t1")
        lock = sqlite3.connect(path, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")
        follower.process.send_signal(signal.SIGCONT)
        try:
            failure = follower.wait_for_line("trying again in")
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        views.wait(views.head(), timeout=20)
        status, stdout = follower.stop()

    assert "database is locked" in failure
    assert (status, stdout) == (0, "stopped at position 2\n")


def test_a_rebuild_swaps_in_the_views_that_reached_the_head(
    durable_url: str, ledger: ContextLedger, views: Projections
) -> None:
    ledger.open_context("alice", "t1")
    ledger.open_context("bob", "t1")
    views.catch_up()
    execute_sql(durable_url, "DELETE FROM ctxl_audit WHERE user_id = 'bob'")
    append_update_of_a_context_never_opened(durable_url, "mallory")  # not for active

    with pytest.raises(ViewCannotApply) as raised:
        views.rebuild()

    assert raised.value.view == "active"
    assert views.verify(["audit", "continuity"]) == {"audit": [], "continuity": []}


def test_follow_stops_between_batches_while_catching_up(durable_url: str) -> None:
    with ContextLedger.open(durable_url) as ledger:
        for n in range(400):
            ledger.open_context(f"user-{n % 40}", f"t{n % 7}")
    stop = threading.Event()
    with Projections.open(durable_url, batch_size=1) as views:
        head = views.head()
        stopper = threading.Timer(0.2, stop.set)
        stopper.start()
        reached = views.follow(stop)
        stopper.join()

    assert 0 < min(reached.values()) < head  # it did not apply the whole backlog
