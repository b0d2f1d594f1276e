"""Following the log: `Projections.follow` applies events as they arrive and stops
between batches when asked; `ctxledger project --follow` outlives its database
connections (PostgreSQL backends terminated, a SQLite file locked)."""

import contextlib
import os
import queue
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from ledger import ContextLedger
from projections import Projections
from tests.helpers import CTXLEDGER, chat


@pytest.fixture
def ledger(durable_url: str) -> Iterator[ContextLedger]:
    with ContextLedger.open(durable_url) as opened:
        yield opened


@pytest.fixture
def views(durable_url: str, ledger: ContextLedger) -> Iterator[Projections]:
    with Projections.open(durable_url) as opened:
        yield opened


def test_follow_applies_events_as_they_arrive_until_stopped(
    ledger: ContextLedger, views: Projections
) -> None:
    stop = threading.Event()
    follower = threading.Thread(
        target=views.follow, args=(stop,), kwargs={"poll_seconds": 0.05}
    )
    follower.start()
    try:
        chat(ledger, users=2, messages=3)
        views.wait(views.head(), timeout=20)
    finally:
        stop.set()
        follower.join(timeout=20)

    assert not follower.is_alive()
    assert views.count_audit() == views.head()


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
