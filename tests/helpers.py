"""Code the tests share: running the CLI, reaching into a test database, workers.

No test module imports another; what two of them need lives here.
"""

import os
import random
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

from ledger import ConcurrencyConflict, ContextLedger, ContextNotFound
from ledger.domain.contexts import user_aggregate_id

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


def execute_sql(url: str, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Runs SQL on a test database directly, as an operator (or intruder) would.

    ``{events}`` and ``{snapshots}`` name the ledger's tables on either backend,
    ``{p}`` is a parameter marker, ``{log}`` the events' position column, and
    ``{c1}`` is the byte 0xC1 (never valid msgpack) as a literal. Returns the rows
    a query selects.
    """
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        names = {
            "events": "stored_events",
            "snapshots": "stored_snapshots",
            "c1": "X'C1'",
            "p": "?",
            "log": "rowid",
        }
        with sqlite3.connect(path) as connection:
            return connection.execute(statement.format(**names), params).fetchall()
    dsn, _, schema = url.partition("?schema=")
    names = {
        "events": "ctxledger_events",
        "snapshots": "ctxledger_snapshots",
        "c1": "decode('c1', 'hex')",
        "p": "%s",
        "log": "notification_id",
    }
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f'SET search_path TO "{schema}"')
        cursor = connection.execute(statement.format(**names), params)
        return cursor.fetchall() if cursor.description else []


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


def stream_key(url: str, user_id: str) -> Any:
    """How the user's stream id is stored: hex text on SQLite, a uuid on PostgreSQL."""
    aggregate_id = user_aggregate_id(user_id)
    return aggregate_id.hex if url.startswith("sqlite:///") else aggregate_id


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
