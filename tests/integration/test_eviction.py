"""on_limit="evict": a user at the limit gets a new context; the least recently used
one is cleared with reason "evicted", and every reader shows it as an eviction."""

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from freezegun import freeze_time
from prometheus_client import REGISTRY

from ledger import (
    AsyncContextLedger,
    ContextLedger,
    ContextLimitExceeded,
    ContextNotFound,
    InvalidContextInput,
    LedgerConfigError,
)
from projections import Projections, ViewNotBuilt
from tests.helpers import OpenLedger, run
from tests.tampering import execute_sql

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def open_three_then_reuse_the_first(ledger: ContextLedger) -> dict[str, str]:
    """Threads a, b, c a minute apart, then a again: b is the least recently used."""
    ids: dict[str, str] = {}
    with freeze_time(START) as clock:
        for thread in ("a", "b", "c"):
            ids[thread] = ledger.open_context("alice", thread).context_id
            clock.tick(60)
        ledger.open_context("alice", "a")
    return ids


@pytest.fixture
def evicting(open_ledger: OpenLedger) -> ContextLedger:
    return open_ledger(max_contexts_per_user=3, on_limit="evict")


def test_opening_at_the_limit_evicts_the_least_recently_used_context(
    evicting: ContextLedger,
) -> None:
    ids = open_three_then_reuse_the_first(evicting)

    with freeze_time(START.replace(minute=5)):
        evicting.open_context("alice", "d")

    with freeze_time(START.replace(minute=5)):
        threads = [c.thread_id for c in evicting.active_contexts("alice")]
    assert threads == ["a", "c", "d"]
    with pytest.raises(ContextNotFound):
        evicting.update_context("alice", ids["b"], metadata={"x": 1})


def test_the_eviction_and_the_creation_are_one_append_of_one_call(
    evicting: ContextLedger,
) -> None:
    ids = open_three_then_reuse_the_first(evicting)

    with freeze_time(START.replace(minute=5)):
        opened = evicting.open_context("alice", "d", request_id="req-d")

    before, evicted, created = evicting.history("alice")[-3:]
    assert (evicted.kind, evicted.context_id) == ("cleared", ids["b"])
    assert evicted.details["reason"] == "evicted"
    assert (created.kind, created.context_id) == ("created", opened.context_id)
    assert [evicted.version, created.version] == [
        before.version + 1,
        before.version + 2,
    ]
    assert evicted.details["command_id"] == created.details["command_id"]
    assert evicted.details["request_id"] == created.details["request_id"] == "req-d"
    assert evicted.occurred_at == created.occurred_at


def test_ties_in_last_use_evict_the_oldest_created_first(
    open_ledger: OpenLedger,
) -> None:
    ledger = open_ledger(max_contexts_per_user=2, on_limit="evict")
    with freeze_time(START) as clock:
        first = ledger.open_context("alice", "a")
        clock.tick(60)
        ledger.open_context("alice", "b")
        clock.tick(60)
        ledger.open_context("alice", "b")
        ledger.open_context("alice", "a")  # both last used now

        ledger.open_context("alice", "c")

        evicted = ledger.history("alice")[-2]
    assert (evicted.kind, evicted.context_id) == ("cleared", first.context_id)


def test_evicting_never_refuses_a_new_context_for_the_limit(
    open_ledger: OpenLedger,
) -> None:
    ledger = open_ledger(max_contexts_per_user=1, on_limit="evict")

    opened = [ledger.open_context("alice", f"t{n}") for n in range(12)]

    assert ledger.active_contexts("alice") == [opened[-1]]
    assert (
        sum(e.details.get("reason") == "evicted" for e in ledger.history("alice")) == 11
    )


def test_a_lowered_limit_evicts_as_many_as_it_takes_to_make_room(
    durable_url: str,
) -> None:
    with ContextLedger.open(durable_url, max_contexts_per_user=4) as before:
        for thread in ("a", "b", "c", "d"):
            before.open_context("alice", thread)

    with ContextLedger.open(
        durable_url, max_contexts_per_user=2, on_limit="evict"
    ) as after:
        after.open_context("alice", "e")
        threads = [c.thread_id for c in after.active_contexts("alice")]
        history = after.history("alice")

    assert threads == ["d", "e"]
    kinds = [(e.kind, e.thread_id) for e in history[-4:]]
    assert kinds == [
        ("cleared", "a"),
        ("cleared", "b"),
        ("cleared", "c"),
        ("created", "e"),
    ]


def test_a_context_past_its_time_to_live_is_recorded_expired_not_evicted(
    open_ledger: OpenLedger,
) -> None:
    ledger = open_ledger(max_contexts_per_user=2, on_limit="evict")
    with freeze_time(START) as clock:
        ledger.open_context("alice", "a", ttl_seconds=60)
        ledger.open_context("alice", "b")
        clock.tick(120)

        ledger.open_context("alice", "c")

    kinds = [(e.kind, e.thread_id) for e in ledger.history("alice")[-2:]]
    assert kinds == [("expired", "a"), ("created", "c")]


def test_reusing_a_thread_at_the_limit_evicts_nothing(evicting: ContextLedger) -> None:
    ids = open_three_then_reuse_the_first(evicting)

    reused = evicting.open_context("alice", "b")

    assert reused.context_id == ids["b"]
    assert [e.kind for e in evicting.history("alice")][-1] == "reused"


def test_a_repeated_request_id_of_an_eviction_returns_the_first_context_and_appends_nothing(  # noqa: E501
    evicting: ContextLedger,
) -> None:
    open_three_then_reuse_the_first(evicting)
    first = evicting.open_context("alice", "d", request_id="req-d")
    stored = len(evicting.history("alice"))

    again = evicting.open_context("alice", "d", request_id="req-d")

    assert again == first
    assert len(evicting.history("alice")) == stored


def test_each_eviction_is_counted_once_in_the_metrics(
    evicting: ContextLedger,
) -> None:
    open_three_then_reuse_the_first(evicting)
    before = REGISTRY.get_sample_value("ctxledger_evictions_total") or 0.0

    evicting.open_context("alice", "d", request_id="req-d")
    evicting.open_context("alice", "d", request_id="req-d")
    evicting.open_context("alice", "a")

    assert REGISTRY.get_sample_value("ctxledger_evictions_total") == before + 1


def test_refuse_stays_the_default(open_ledger: OpenLedger) -> None:
    ledger = open_ledger(max_contexts_per_user=1)
    ledger.open_context("alice", "a")

    with pytest.raises(ContextLimitExceeded, match="already has 1 active context"):
        ledger.open_context("alice", "b")

    assert ledger.on_limit == "refuse"


@pytest.mark.parametrize("bad", ["drop", "EVICT", "", None, 1])
def test_an_unknown_limit_policy_is_a_configuration_error(bad: object) -> None:
    with pytest.raises(LedgerConfigError, match=r"pass 'refuse' .* or 'evict'"):
        ContextLedger.open("memory://", on_limit=bad)  # type: ignore[arg-type]


def test_callers_cannot_clear_a_context_with_the_reserved_reason(
    evicting: ContextLedger,
) -> None:
    opened = evicting.open_context("alice", "a")

    with pytest.raises(InvalidContextInput, match="reserved for the contexts"):
        evicting.clear_context("alice", opened.context_id, reason="evicted")

    with pytest.raises(InvalidContextInput, match="reserved for the contexts"):
        evicting.clear_user("alice", reason="evicted")
    assert len(evicting.history("alice")) == 1


def test_the_async_ledger_evicts_as_the_ledger_does(durable_url: str) -> None:
    async def scenario() -> list[str]:
        async with AsyncContextLedger.open(
            durable_url, max_contexts_per_user=1, on_limit="evict"
        ) as ledger:
            await ledger.open_context("alice", "a")
            await ledger.open_context("alice", "b")
            return [
                e.details.get("reason", e.kind) for e in await ledger.history("alice")
            ]

    assert asyncio.run(scenario()) == ["created", "evicted", "created"]


def test_the_async_ledger_refuses_an_unknown_limit_policy(durable_url: str) -> None:
    async def scenario() -> None:
        async with AsyncContextLedger.open(durable_url, on_limit="drop") as ledger:
            await ledger.open_context("alice", "a")

    with pytest.raises(LedgerConfigError, match="on_limit='drop'"):
        asyncio.run(scenario())


# The views, on SQLite and PostgreSQL.


@pytest.fixture
def evicted_url(durable_url: str) -> str:
    """Alice at a limit of 2 opens a third context: her thread a is evicted; Bob
    clears one of his on request."""
    with (
        ContextLedger.open(
            durable_url, max_contexts_per_user=2, on_limit="evict"
        ) as ledger,
        freeze_time(START) as clock,
    ):
        for thread in ("a", "b", "c"):
            ledger.open_context("alice", thread)
            clock.tick(60)
        bob = ledger.open_context("bob", "a")
        ledger.clear_context("bob", bob.context_id)
    return durable_url


@pytest.fixture
def views(evicted_url: str) -> Iterator[Projections]:
    with Projections.open(evicted_url) as opened:
        opened.catch_up()
        yield opened


def test_the_active_view_drops_the_evicted_context(views: Projections) -> None:
    assert [c.thread_id for c in views.active_contexts("alice")] == ["b", "c"]


def test_the_audit_view_shows_the_eviction_with_its_reason(views: Projections) -> None:
    rows = views.audit_rows("alice", kind="cleared")

    assert [(r.thread_id, r.details["reason"]) for r in rows] == [("a", "evicted")]


def test_the_continuity_view_counts_evictions_apart_from_clears(
    views: Projections,
) -> None:
    alice, total = views.continuity("alice"), views.continuity()

    assert (alice.created, alice.evicted, alice.cleared) == (3, 1, 0)
    assert (total.created, total.evicted, total.cleared) == (4, 1, 1)


def test_the_views_with_evictions_equal_a_replay(views: Projections) -> None:
    assert views.verify() == {"active": [], "audit": [], "continuity": []}


def test_a_continuity_view_of_an_earlier_release_gets_the_evictions_column(
    evicted_url: str,
) -> None:
    with Projections.open(evicted_url) as views:
        views.catch_up()
    execute_sql(evicted_url, "ALTER TABLE ctxl_continuity_users DROP COLUMN evicted")
    execute_sql(
        evicted_url,
        "UPDATE ctxl_continuity_users SET cleared = 1 WHERE user_id = 'alice'",
    )

    with Projections.open(evicted_url) as views:
        upgraded = views.continuity("alice")
        differences = views.verify(["continuity"])

    assert (upgraded.evicted, upgraded.cleared) == (0, 1)
    assert differences["continuity"] == [
        "user 'alice': cleared: view 1, replay 0; evicted: view 0, replay 1"
    ]


def test_a_reader_of_a_continuity_view_of_an_earlier_release_is_told_to_project(
    evicted_url: str,
) -> None:
    with Projections.open(evicted_url) as views:
        views.catch_up()
    execute_sql(evicted_url, "ALTER TABLE ctxl_continuity_users DROP COLUMN evicted")

    with (
        Projections.open(evicted_url, create=False) as reader,
        pytest.raises(ViewNotBuilt, match=r"lacks continuity_users\.evicted; run"),
    ):
        reader.continuity()


# The CLI.


def test_the_cli_shows_evictions_in_continuity_audit_and_active(
    evicted_url: str, tmp_path: Path
) -> None:
    run("--db", evicted_url, "project", cwd=tmp_path)

    figures = run("--db", evicted_url, "continuity", "--user", "alice", cwd=tmp_path)
    audit = run("--db", evicted_url, "audit", "alice", "--format", "json", cwd=tmp_path)
    active = run("--db", evicted_url, "active", "--json", cwd=tmp_path)

    assert figures.returncode == 0, figures.stderr
    pairs = [
        [cell.strip() for cell in line.strip("│").split("│")]
        for line in figures.stdout.splitlines()
        if line.startswith("│")
    ]
    assert ["cleared", "0"] in pairs
    assert ["evicted", "1"] in pairs
    cleared = [row for row in json.loads(audit.stdout) if row["kind"] == "cleared"]
    assert [(r["thread_id"], r["details"]["reason"]) for r in cleared] == [
        ("a", "evicted")
    ]
    assert [(c["user_id"], c["thread_id"]) for c in json.loads(active.stdout)] == [
        ("alice", "b"),
        ("alice", "c"),
    ]


def test_the_cli_report_counts_the_users_evictions(
    evicted_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "alice.html"

    result = run(
        "--db", evicted_url, "report", "alice", "--out", str(out), cwd=tmp_path
    )

    assert result.returncode == 0, result.stderr
    assert (
        '<div data-figure="evicted"><dt>evicted to make room</dt><dd>1</dd></div>'
        in out.read_text()
    )
