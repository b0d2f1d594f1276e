"""Fixtures: one ledger per test on SQLite (a real file), PostgreSQL and memory."""

import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import freezegun
import psycopg
import pytest

from ledger import ContextLedger
from ledger.domain.contexts import user_aggregate_id

# Database drivers keep real time under freezegun; ledger event times still freeze.
freezegun.configure(
    extend_ignore_list=["psycopg", "psycopg_pool", "eventsourcing", "hypothesis"]
)

POSTGRES_DSN = os.environ.get(
    "CTXLEDGER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)
OpenLedger = Callable[..., ContextLedger]


def _postgres_reachable() -> str | None:
    try:
        with psycopg.connect(POSTGRES_DSN, connect_timeout=3):
            return None
    except psycopg.Error as error:
        return str(error).strip()


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """The test server's URL; under CI=true an unreachable server fails the test."""
    problem = _postgres_reachable()
    if problem is not None:
        message = f"PostgreSQL at {POSTGRES_DSN} is unreachable: {problem}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return POSTGRES_DSN


@pytest.fixture
def postgres_url(postgres_dsn: str) -> Iterator[str]:
    """A fresh schema for one test, dropped afterwards."""
    schema = f"ctxl_test_{uuid.uuid4().hex[:12]}"
    yield f"{postgres_dsn}?schema={schema}"
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        "memory",
    ]
)
def ledger_url(request: pytest.FixtureRequest) -> str:
    """The same test on each storage."""
    if request.param == "memory":
        return "memory://"
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def durable_url(request: pytest.FixtureRequest) -> str:
    """Storage that outlives the process: SQLite and PostgreSQL."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    return url


@pytest.fixture
def open_ledger(ledger_url: str) -> Iterator[OpenLedger]:
    """Opens ledgers on this test's storage; all are closed after the test."""
    opened: list[ContextLedger] = []

    def _open(**options: Any) -> ContextLedger:
        ledger = ContextLedger.open(ledger_url, **options)
        opened.append(ledger)
        return ledger

    yield _open
    for ledger in opened:
        ledger.close()


@pytest.fixture
def ledger(open_ledger: OpenLedger) -> ContextLedger:
    return open_ledger()


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


def stream_key(url: str, user_id: str) -> Any:
    """How the user's stream id is stored: hex text on SQLite, a uuid on PostgreSQL."""
    aggregate_id = user_aggregate_id(user_id)
    return aggregate_id.hex if url.startswith("sqlite:///") else aggregate_id
