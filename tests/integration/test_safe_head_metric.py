"""On PostgreSQL a reader of the log waits at its safe head for every transaction
older than its read, the application's own included; the wait is recorded in
``ctxledger_safe_head_wait_seconds``, and a read that gives up in
``ctxledger_safe_head_timeouts_total``."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from prometheus_client import REGISTRY
from psycopg.sql import SQL, Identifier

from ledger import ContextLedger
from ledger._store.backends import safe_head
from ledger._store.postgres_log import SafeHeadTimeout
from projections import Projections
from tests.helpers import dsn_and_schema, raw_connection, wait_until

pytestmark = pytest.mark.postgres

WAIT_SECONDS = 60


def _value(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


@contextmanager
def _transaction_held_open(url: str) -> Iterator[None]:
    """An application's transaction that took a transaction id (it inserted a row
    into a table of its own, no event of the ledger) and stays open until the
    block ends."""
    _, schema = dsn_and_schema(url)
    messages = Identifier(schema, "messages")
    with raw_connection(url) as connection:
        connection.execute(SQL("CREATE TABLE {} (body text)").format(messages))
        with connection.transaction():
            connection.execute(SQL("INSERT INTO {} VALUES ('hi')").format(messages))
            yield


def _reader_is_waiting(url: str, application_name: str) -> bool:
    """Whether one of this test's connections has asked whether the transactions
    older than its read have ended (the query a reader repeats while it waits)."""
    with raw_connection(url) as connection:
        row = connection.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = %s "
            "AND query LIKE '%%pg_snapshot_xmin%%'",
            (application_name,),
        ).fetchone()
    return row is not None


def test_a_reader_held_up_by_an_open_transaction_records_its_wait(
    postgres_url: str, application_name: str
) -> None:
    with (
        ContextLedger.open(postgres_url) as ledger,
        Projections.open(postgres_url) as views,
    ):
        ledger.open_context("alice", "t")
        count_before = _value("ctxledger_safe_head_wait_seconds_count")
        sum_before = _value("ctxledger_safe_head_wait_seconds_sum")
        reader = threading.Thread(target=views.catch_up, daemon=True)
        with _transaction_held_open(postgres_url):
            reader.start()
            wait_until(
                lambda: _reader_is_waiting(postgres_url, application_name),
                "the reader to wait",
            )
            assert reader.is_alive()
        reader.join(WAIT_SECONDS)

        assert not reader.is_alive()
        assert views.count_audit() == 1
    assert _value("ctxledger_safe_head_wait_seconds_count") > count_before
    assert _value("ctxledger_safe_head_wait_seconds_sum") > sum_before


def test_a_read_that_gives_up_waiting_is_counted_as_a_timeout(
    postgres_url: str,
) -> None:
    with ContextLedger.open(postgres_url) as ledger:
        ledger.open_context("alice", "t")
        timeouts_before = _value("ctxledger_safe_head_timeouts_total")
        count_before = _value("ctxledger_safe_head_wait_seconds_count")
        with (
            _transaction_held_open(postgres_url),
            pytest.raises(SafeHeadTimeout, match="began before the read"),
        ):
            safe_head(ledger._app.recorder, timeout=0.2)

    assert _value("ctxledger_safe_head_timeouts_total") > timeouts_before
    assert _value("ctxledger_safe_head_wait_seconds_count") > count_before
