"""Arguments are checked the same way by the ledger and its views: periods, limits,
ids, times (the first and last instants included) and view names; a view's lag counts
events, not positions."""

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest

from ledger import ContextLedger, InvalidContextInput, LedgerConfigError
from projections import Projections, UnknownView

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def ledger(durable_url: str) -> Iterator[ContextLedger]:
    with ContextLedger.open(durable_url) as opened:
        yield opened


@pytest.fixture
def views(durable_url: str, ledger: ContextLedger) -> Iterator[Projections]:
    with Projections.open(durable_url) as opened:
        yield opened


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
