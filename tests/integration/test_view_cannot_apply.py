"""A view that cannot apply an event stops there and names the view, the position,
the user and the cause; the events before it and the other views go on; a rebuild
that meets such an event keeps the live view; `ctxledger project` prints it and
exits 1, and a follower stops on it."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger import ContextLedger
from projections import Projections, UndecodableEvent, ViewCannotApply
from tests.helpers import chat, run
from tests.tampering import (
    append_update_of_a_context_never_opened,
    execute_sql,
    lose_alices_active_row,
)


@pytest.fixture
def ledger(durable_url: str) -> Iterator[ContextLedger]:
    with ContextLedger.open(durable_url) as opened:
        yield opened


@pytest.fixture
def views(durable_url: str, ledger: ContextLedger) -> Iterator[Projections]:
    with Projections.open(durable_url) as opened:
        yield opened


def test_a_view_that_cannot_apply_an_event_names_the_view_position_user_and_cause(
    durable_url: str, ledger: ContextLedger, views: Projections
) -> None:
    lose_alices_active_row(durable_url, ledger, views)

    with pytest.raises(ViewCannotApply) as raised:
        views.catch_up()

    error = raised.value
    assert (error.view, error.position, error.user_id) == ("active", 4, "alice")
    assert error.cause.startswith("ValueError: ContextUpdated of context")
    assert str(error).startswith(
        "the active view cannot apply the event at position 4 (user 'alice'): "
        "ValueError: ContextUpdated of context"
    )
    assert "ctxledger rebuild active" in str(error)


def test_the_events_before_the_culprit_and_the_other_views_go_on(
    durable_url: str, ledger: ContextLedger, views: Projections
) -> None:
    lose_alices_active_row(durable_url, ledger, views)

    with pytest.raises(ViewCannotApply):
        views.catch_up()

    assert [status.position for status in views.status()] == [3, 5, 5]


def test_a_rebuild_that_cannot_apply_an_event_names_it_and_keeps_the_live_view(
    durable_url: str, ledger: ContextLedger, views: Projections
) -> None:
    ledger.open_context("alice", "t1")
    views.catch_up()
    append_update_of_a_context_never_opened(durable_url, "mallory")
    live = views.active_contexts()

    with pytest.raises(ViewCannotApply) as raised:
        views.rebuild(["active"])

    assert (raised.value.view, raised.value.position) == ("active", 2)
    assert raised.value.user_id == "mallory"
    assert views.active_contexts() == live


def test_a_rebuild_names_an_event_it_cannot_apply_among_the_last_ones(
    durable_url: str, ledger: ContextLedger, views: Projections
) -> None:
    ledger.open_context("alice", "t1")
    ledger.open_context("bob", "t1")
    views.catch_up()
    appended: list[int] = []

    def append_once(_: int) -> None:
        if not appended:  # after the rebuild read up to the head it began with
            append_update_of_a_context_never_opened(durable_url, "mallory")
            appended.append(views.head())

    with pytest.raises(ViewCannotApply) as raised:
        views.rebuild(["active"], on_batch=append_once)

    assert (raised.value.view, raised.value.position) == ("active", appended[0])
    assert raised.value.user_id == "mallory"
    assert views.status()[0].position == 2


def test_project_prints_the_event_a_view_cannot_apply_and_exits_1(
    durable_url: str, ledger: ContextLedger, views: Projections, tmp_path: Path
) -> None:
    lose_alices_active_row(durable_url, ledger, views)

    result = run("--db", durable_url, "project", cwd=tmp_path)

    assert result.returncode == 1
    assert result.stderr.strip().startswith(
        "ViewCannotApply: the active view cannot apply the event at position 4 "
        "(user 'alice'): ValueError: "
    )
    assert "check that the database is running" not in result.stderr


def test_a_follower_stops_on_an_event_a_view_cannot_apply(
    durable_url: str, ledger: ContextLedger, views: Projections, tmp_path: Path
) -> None:
    lose_alices_active_row(durable_url, ledger, views)

    result = run("--db", durable_url, "project", "--follow", cwd=tmp_path)

    assert result.returncode == 1
    assert "ViewCannotApply: the active view cannot apply the event at position 4" in (
        result.stderr
    )


def test_an_undecodable_event_stops_processing_and_names_its_position(
    durable_url: str, ledger: ContextLedger, views: Projections
) -> None:
    chat(ledger, users=1, messages=3)
    execute_sql(
        durable_url, "UPDATE {events} SET state = {c1} WHERE originator_version = 2"
    )

    with pytest.raises(UndecodableEvent, match="at position 2 cannot be decoded"):
        views.catch_up()

    assert [s.position for s in views.status()] == [1, 1, 1]
    assert views.count_audit() == 1
