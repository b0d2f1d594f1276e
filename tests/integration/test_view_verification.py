"""Verifying the views against a replay of the ledger: a row altered in the
database and a view behind the head are differences, named; `ctxledger verify`
exits 1 then."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger import ContextLedger
from projections import Projections
from tests.helpers import chat, run
from tests.tampering import execute_sql, lose_alices_active_row


@pytest.fixture
def ledger(durable_url: str) -> Iterator[ContextLedger]:
    with ContextLedger.open(durable_url) as opened:
        yield opened


@pytest.fixture
def views(durable_url: str, ledger: ContextLedger) -> Iterator[Projections]:
    with Projections.open(durable_url) as opened:
        yield opened


def test_verify_reports_a_view_row_altered_in_the_database(
    durable_url: str, ledger: ContextLedger, views: Projections
) -> None:
    chat(ledger)
    views.catch_up()
    execute_sql(
        durable_url, "UPDATE ctxl_audit SET kind = 'updated' WHERE position = 7"
    )
    execute_sql(durable_url, "UPDATE ctxl_continuity_users SET reused = 0")
    execute_sql(durable_url, "DELETE FROM ctxl_active_contexts WHERE user_id = 'u1'")

    found = views.verify()

    assert found["audit"] == ["audit position 7: kind: view 'updated', replay 'reused'"]
    assert any(
        line.startswith("user 'u0': reused: view 0, replay")
        for line in found["continuity"]
    )
    assert any("missing from the view" in line for line in found["active"])
    views.rebuild()
    assert views.verify() == {"active": [], "audit": [], "continuity": []}


def test_verify_reports_a_view_behind_the_head_as_a_difference(
    ledger: ContextLedger, views: Projections
) -> None:
    ledger.open_context("alice", "t1")
    views.catch_up()
    ledger.open_context("alice", "t2")
    ledger.open_context("bob", "t1")

    found = views.verify()

    assert found["audit"] == [
        "behind the ledger by 2 event(s): at position 1, the head is 3; run "
        "`ctxledger project` (if it stops, its error names the event)"
    ]


def test_verify_of_a_view_stuck_before_an_event_exits_1_saying_it_is_behind(
    durable_url: str, ledger: ContextLedger, views: Projections, tmp_path: Path
) -> None:
    lose_alices_active_row(durable_url, ledger, views)
    run("--db", durable_url, "project", cwd=tmp_path)

    result = run("--db", durable_url, "verify", cwd=tmp_path)

    assert result.returncode == 1
    assert "active: DIFFERS" in result.stdout
    assert "  behind the ledger by 2 event(s): at position 3, the head is 5" in (
        result.stdout
    )
    assert "audit: equal to the replay" in result.stdout
