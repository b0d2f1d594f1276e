"""Fixtures: one ledger per test on SQLite (a real file), PostgreSQL and memory."""

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import freezegun
import psycopg
import pytest

from ledger import ContextLedger
from ledger._shard_admin import add_shard
from tests.helpers import OpenLedger
from tests.shard_proxy import ProxiedShards, proxied_shards_on

# Database drivers keep real time under freezegun; ledger event times still freeze.
freezegun.configure(
    extend_ignore_list=["psycopg", "psycopg_pool", "eventsourcing", "hypothesis"]
)

POSTGRES_DSN = os.environ.get(
    "CTXLEDGER_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test"
)


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


SHARDS = 3


@pytest.fixture
def shard_urls(postgres_dsn: str) -> Iterator[list[str]]:
    """Three fresh PostgreSQL databases (each a shard's), dropped afterwards."""
    base, _, _ = postgres_dsn.rpartition("/")
    names = [f"ctxl_shard_{uuid.uuid4().hex[:10]}_{i}" for i in range(SHARDS)]
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        for name in names:
            connection.execute(f'CREATE DATABASE "{name}"')
    # Small pools: a sharded ledger holds one per shard, and the server is shared.
    yield [f"{base}/{name}?schema=ctxl&pool_size=2" for name in names]
    with psycopg.connect(postgres_dsn, autocommit=True) as connection:
        for name in names:
            # FORCE ends only the connections to this test's own database.
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def sharded_url(shard_urls: list[str]) -> str:
    """The URL of a ledger over the three shards (shard 0 holds the directory)."""
    for shard_url in shard_urls[1:]:
        add_shard(shard_urls[0], shard_url)
    return shard_urls[0]


@pytest.fixture
def proxied_shards(shard_urls: list[str]) -> Iterator[ProxiedShards]:
    """Three shards; shard 2 registered by the URL of a proxy the test can cut."""
    with proxied_shards_on(shard_urls) as shards:
        yield shards


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


@pytest.fixture
def application_name(monkeypatch: pytest.MonkeyPatch) -> str:
    """Names every connection this test's ledgers open (libpq reads PGAPPNAME), so
    the test touches only backends of its own."""
    name = f"ctxledger-test-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("PGAPPNAME", name)
    return name
