"""Code the tests share: running the CLI, reaching into a test database, workers.

No test module imports another; what two of them need lives here.
"""

import contextlib
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import psycopg
import pytest

from ledger import ConcurrencyConflict, ContextLedger, ContextNotFound
from ledger._domain.contexts import user_aggregate_id

# Tampering lives in tests/tampering.py; these names stay importable from here too
# (as ... as marks them re-exported for mypy).
from tests.tampering import (
    append_raw_creation as append_raw_creation,  # noqa: PLC0414
)
from tests.tampering import (
    append_raw_event as append_raw_event,  # noqa: PLC0414
)
from tests.tampering import (
    append_update_of_a_context_never_opened as append_update_of_a_context_never_opened,  # noqa: PLC0414
)
from tests.tampering import (
    execute_sql as execute_sql,  # noqa: PLC0414
)
from tests.tampering import (
    stream_key as stream_key,  # noqa: PLC0414
)

OpenLedger = Callable[..., ContextLedger]
CTXLEDGER = str(Path(sys.executable).with_name("ctxledger"))


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "CTXLEDGER_URL"}
    return subprocess.run(
        [CTXLEDGER, *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def cli_on(*args: str, url: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``ctxledger --db URL ARGS`` with ``stdin``, as an operator types it."""
    environment = {k: v for k, v in os.environ.items() if k != "CTXLEDGER_URL"}
    return subprocess.run(
        [CTXLEDGER, "--db", url, *args],
        input=stdin,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str], name: str) -> str:
    """The stderr of a command that failed with ``name``: one line, no traceback."""
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{name}: ")
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def schema_exists(url: str) -> bool:
    """Whether the schema of a PostgreSQL test URL (``...?schema=NAME``) exists."""
    dsn, _, schema = url.partition("?schema=")
    with psycopg.connect(dsn) as connection:
        row = connection.execute(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s",
            (schema,),
        ).fetchone()
    return row is not None


def table_names(url: str) -> set[str]:
    """The tables in a test database (its schema on PostgreSQL)."""
    if url.startswith("sqlite:///"):
        rows = execute_sql(url, "SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        rows = execute_sql(
            url,
            "SELECT table_name FROM information_schema.tables WHERE table_schema = {p}",
            (url.rpartition("schema=")[2],),
        )
    return {row[0] for row in rows}


USERS = ("u0", "u1", "u2")
THREADS = ("t0", "t1")


def hammer(url: str, seed: int, calls: int) -> dict[str, int]:
    """Random opens, updates and clears; counts what was appended."""
    rng = random.Random(seed)
    done: Counter[str] = Counter()
    with ContextLedger.open(url) as ledger:
        for _ in range(calls):
            user, thread = rng.choice(USERS), rng.choice(THREADS)
            roll = rng.random()
            try:
                if roll < 0.75:
                    ledger.open_context(user, thread, metadata={"seed": seed})
                    done["opened"] += 1
                    continue
                current = ledger.get_context(user, thread)
                if current is None:
                    done["nothing_to_change"] += 1
                elif roll < 0.9:
                    ledger.update_context(
                        user, current.context_id, metadata={"n": seed}
                    )
                    done["updated"] += 1
                else:
                    ledger.clear_context(user, current.context_id)
                    done["cleared"] += 1
            except ContextNotFound:
                done["raced_with_a_clear"] += 1
            except ConcurrencyConflict:
                done["conflicts"] += 1
    return dict(done)


class CuttingProxy:
    """A TCP proxy in front of a real server that can lose a reply: armed, it
    forwards the next client message holding ``marker`` (by default an event's
    topic, so the message that appends events), lets the server answer it, then
    closes both sides without passing the answer on. ``stay_down`` makes
    that cut close every connection and turn new ones away, as a database that
    stays unreachable, until ``refuse`` is cleared."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.armed = threading.Event()
        self.cuts = 0
        self.refuse = False
        self.stay_down = False
        self.marker = b"ctxledger:Context"
        self.linger = 0.2
        """Seconds between forwarding the append and cutting: time to commit."""
        self._open: set[socket.socket] = set()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closing = True
        self._server.close()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self.refuse:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            self._open |= {client, upstream}
            lost = threading.Event()  # the server's answers on this pair are lost
            threading.Thread(
                target=self._pipe, args=(client, upstream, True, lost), daemon=True
            ).start()
            threading.Thread(
                target=self._pipe, args=(upstream, client, False, lost), daemon=True
            ).start()

    def _pipe(
        self,
        source: socket.socket,
        sink: socket.socket,
        upward: bool,
        lost: threading.Event,
    ) -> None:
        # A socket error is how a pipe ends once either side (or a cut) closes.
        with contextlib.suppress(OSError):
            while chunk := source.recv(65536):
                cutting = upward and self.marker in chunk and self.armed.is_set()
                if cutting:
                    self.armed.clear()
                    lost.set()  # before the server can answer
                if not upward and lost.is_set():
                    continue  # the answer is dropped
                sink.sendall(chunk)
                if cutting:
                    self.cuts += 1
                    time.sleep(self.linger)  # the server commits; nobody reads it
                    if self.stay_down:
                        self.refuse = True
                        self.cut_all()
                    break
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()

    def cut_all(self) -> None:
        """Closes every connection through the proxy."""
        for end in list(self._open):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)


# PostgreSQL: connections of a test's own, and appends held open on purpose.

HELD_WAIT_SECONDS = 60


def dsn_and_schema(url: str) -> tuple[str, str]:
    """The server's DSN and the schema of a test URL (``...?schema=NAME[&...]``)."""
    dsn, _, options = url.partition("?schema=")
    return dsn, options.partition("&")[0]


@contextmanager
def raw_connection(url: str) -> Iterator[psycopg.Connection]:
    """A connection of the test's own, outside the ledger's pool."""
    dsn, _ = dsn_and_schema(url)
    with psycopg.connect(
        dsn, autocommit=True, application_name="ctxledger-test-raw"
    ) as connection:
        yield connection


def wait_until(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + HELD_WAIT_SECONDS
    while not (found := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.01)
    return found


@contextmanager
def appends_held(
    url: str, user_id: str, *, stage: Literal["inserting", "committing"] = "inserting"
) -> Iterator[None]:
    """Appends for ``user_id`` stop inside their transaction, after drawing their
    notification ids (as they insert, or in their COMMIT), until the block ends: a
    trigger waits on a lock the test holds."""
    _, schema = dsn_and_schema(url)
    key = f"hashtext('{schema} hold')"
    kind = "CONSTRAINT TRIGGER" if stage == "committing" else "TRIGGER"
    deferred = "DEFERRABLE INITIALLY DEFERRED" if stage == "committing" else ""
    with raw_connection(url) as holder:
        holder.execute(
            f'CREATE OR REPLACE FUNCTION "{schema}".hold() RETURNS trigger '
            "LANGUAGE plpgsql AS $$ BEGIN "
            f"PERFORM pg_advisory_xact_lock_shared({key}); RETURN NULL; END $$"
        )
        holder.execute(
            f'CREATE {kind} hold_{stage} AFTER INSERT ON "{schema}".ctxledger_events '
            f"{deferred} FOR EACH ROW "
            f"WHEN (NEW.originator_id = '{user_aggregate_id(user_id)}') "
            f'EXECUTE FUNCTION "{schema}".hold()'
        )
        holder.execute(f"SELECT pg_advisory_lock({key})")
        try:
            yield
        finally:
            holder.execute(f"SELECT pg_advisory_unlock({key})")
            holder.execute(f'DROP TRIGGER hold_{stage} ON "{schema}".ctxledger_events')


def held_backend(url: str, application_name: str) -> int:
    """The pid of our own connection that waits inside a held append."""

    def find() -> int | None:
        with raw_connection(url) as connection:
            row = connection.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s "
                "AND wait_event_type = 'Lock' AND wait_event = 'advisory'",
                (application_name,),
            ).fetchone()
        return None if row is None else int(row[0])

    pid: int = wait_until(find, f"a held append of {application_name}")
    return pid


def chat(ledger: ContextLedger, users: int = 3, messages: int = 10) -> None:
    """Users u0.. open threads t0 and t1 in turn, each message a run; every fourth
    round clears the context: a small history for the views."""
    for n in range(messages):
        for user in range(users):
            context = ledger.open_context(f"u{user}", f"t{n % 2}", run_id=f"r{n}")
            if n % 4 == 3:
                ledger.clear_context(f"u{user}", context.context_id)
