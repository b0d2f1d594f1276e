"""Periods and limits are checked the same way by the ledger and its views, and
a view's lag counts events, not positions."""

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from ledger import ContextLedger, InvalidContextInput, LedgerConfigError
from projections import Projections

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def test_the_views_refuse_a_period_that_ends_before_it_starts(
    durable_url: str,
) -> None:
    with (
        Projections.open(durable_url) as views,
        pytest.raises(InvalidContextInput, match=r"until=.* is before since"),
    ):
        views.audit_rows("alice", since=T0, until=T0 - timedelta(seconds=1))


def test_the_ledger_refuses_a_period_that_ends_before_it_starts(
    durable_url: str,
) -> None:
    with (
        ContextLedger.open(durable_url) as ledger,
        pytest.raises(InvalidContextInput, match=r"until=.* is before since"),
    ):
        ledger.history("alice", since=T0, until=T0 - timedelta(seconds=1))


def test_history_with_a_limit_gives_the_first_events_of_the_period(
    durable_url: str,
) -> None:
    now = [T0]
    with ContextLedger.open(durable_url, clock=lambda: now[0]) as ledger:
        for minute in range(5):
            now[0] = T0 + timedelta(minutes=minute)
            ledger.open_context("alice", "t")

        firsts = ledger.history("alice", limit=2)
        later = ledger.history("alice", since=T0 + timedelta(minutes=2), limit=2)

    assert [event.version for event in firsts] == [1, 2]
    assert [event.version for event in later] == [3, 4]


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_a_limit_that_is_not_a_positive_int_is_refused(
    durable_url: str, bad: object
) -> None:
    with (
        ContextLedger.open(durable_url) as ledger,
        pytest.raises(InvalidContextInput, match=r"limit=.* is not an int of 1"),
    ):
        ledger.history("alice", limit=bad)  # type: ignore[arg-type]
    with (
        Projections.open(durable_url) as views,
        pytest.raises(InvalidContextInput, match=r"limit=.* is not an int of 1"),
    ):
        views.active_contexts("alice", limit=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, True, "10"])
def test_a_bad_batch_size_is_a_configuration_error(
    durable_url: str, bad: object
) -> None:
    with pytest.raises(LedgerConfigError, match=r"batch_size=.* must be an int of 1"):
        Projections.open(durable_url, batch_size=bad)  # type: ignore[arg-type]


@pytest.mark.postgres
def test_a_views_lag_counts_events_where_positions_skip_numbers(
    postgres_url: str, postgres_dsn: str
) -> None:
    schema = postgres_url.rsplit("schema=", 1)[1]
    with ContextLedger.open(postgres_url) as ledger:
        ledger.open_context("alice", "t1")
        with Projections.open(postgres_url) as views:
            views.catch_up()
            with psycopg.connect(postgres_dsn, autocommit=True) as admin:
                # Rolled-back writes leave holes like these in the positions.
                table = f'"{schema}".ctxledger_events'
                admin.execute(
                    "SELECT setval(pg_get_serial_sequence(%s, 'notification_id'), 200)",
                    (table,),
                )
            ledger.open_context("alice", "t2")
            ledger.open_context("bob", "t1")

            status = views.status()

    assert {row.view: row.lag for row in status} == {
        "active": 2,
        "audit": 2,
        "continuity": 2,
    }
    assert all(row.head - row.position > 100 for row in status)
    assert all(row.position == 1 for row in status)
