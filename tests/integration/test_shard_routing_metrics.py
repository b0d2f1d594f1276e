"""Prometheus figures of a sharded ledger: commands and views by shard in
families of their own, the existing families summed over the shards; a single
database records exactly the series it always did."""

from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY

from ledger import ContextLedger
from ledger._sharded import ShardedLedger
from projections import Projections
from tests.shard_sql import shard_sql

pytestmark = pytest.mark.postgres


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _shard_series() -> float:
    """Every sample of the by-shard command families, added up."""
    return sum(
        sample.value
        for family in REGISTRY.collect()
        if family.name.startswith("ctxledger_shard_command")
        for sample in family.samples
    )


def _opened_by_shard() -> list[float]:
    return [
        _value(
            "ctxledger_shard_commands_total",
            shard=str(shard),
            command="open_context",
            outcome="ok",
        )
        for shard in range(3)
    ]


def _change(read: Callable[[], list[float]], before: list[float]) -> list[float]:
    return [after - first for after, first in zip(read(), before, strict=True)]


def _head(url: str) -> float:
    statement = "SELECT coalesce(max(notification_id), 0) FROM ctxledger_events"
    return float(shard_sql(url, statement)[0][0])


def test_commands_are_counted_by_the_shard_that_ran_them(sharded_url: str) -> None:
    users = [f"user-{n}" for n in range(20)]
    with ContextLedger.open(sharded_url) as ledger:
        assert isinstance(ledger, ShardedLedger)
        before = _opened_by_shard()
        total = _value("ctxledger_commands_total", command="open_context", outcome="ok")
        for user in users:
            ledger.open_context(user, "t")
        homes = [ledger.shard_of(user) for user in users]

    assert _change(_opened_by_shard, before) == [homes.count(s) for s in range(3)]
    assert _value(
        "ctxledger_commands_total", command="open_context", outcome="ok"
    ) - total == len(users)


def test_command_latency_is_recorded_by_shard(sharded_url: str) -> None:
    with ContextLedger.open(sharded_url) as ledger:
        assert isinstance(ledger, ShardedLedger)
        ledger.open_context("alice", "t")
        home = str(ledger.shard_of("alice"))
        before = _value(
            "ctxledger_shard_command_duration_seconds_count",
            shard=home,
            command="clear_user",
        )
        ledger.clear_user("alice")

    assert (
        _value(
            "ctxledger_shard_command_duration_seconds_count",
            shard=home,
            command="clear_user",
        )
        - before
        == 1
    )


def test_a_single_database_records_no_series_by_shard(postgres_url: str) -> None:
    before = _shard_series()
    with ContextLedger.open(postgres_url) as ledger:
        for n in range(5):
            ledger.open_context(f"user-{n}", "t")

    assert _shard_series() == before


def test_the_views_record_each_shards_position_head_and_lag(
    sharded_url: str, shard_urls: list[str]
) -> None:
    with ContextLedger.open(sharded_url) as ledger:
        assert isinstance(ledger, ShardedLedger)
        for n in range(20):
            ledger.open_context(f"user-{n}", "t")
        late = next(f"user-{n}" for n in range(20) if ledger.shard_of(f"user-{n}"))
        with Projections.open(sharded_url) as views:
            views.catch_up()
            ledger.open_context(late, "later")
            views.catch_up(["audit"])
        behind = str(ledger.shard_of(late))
    heads = [_head(url) for url in shard_urls]

    assert [
        _value("ctxledger_shard_view_position", shard=str(s), view="audit")
        for s in range(3)
    ] == heads
    assert [_value("ctxledger_shard_view_head", shard=str(s)) for s in range(3)] == (
        heads
    )
    assert _value("ctxledger_shard_view_lag_events", shard=behind, view="active") == 1
    assert _value("ctxledger_view_lag_events", view="active") == 1
    assert _value("ctxledger_view_head") == sum(heads)
    assert [_value("ctxledger_shard_reachable", shard=str(s)) for s in range(3)] == [
        1,
        1,
        1,
    ]
