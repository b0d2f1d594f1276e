"""Processing the views: rebuild, interruption, bad events, follow, concurrency."""

import threading
from collections.abc import Iterator

import pytest

from ledger import ContextLedger
from projections import Projections, UndecodableEvent
from tests.helpers import append_raw_creation, execute_sql


@pytest.fixture
def ledger(durable_url: str) -> Iterator[ContextLedger]:
    with ContextLedger.open(durable_url) as opened:
        yield opened


@pytest.fixture
def views(durable_url: str, ledger: ContextLedger) -> Iterator[Projections]:
    with Projections.open(durable_url, batch_size=4) as opened:
        yield opened


def chat(ledger: ContextLedger, users: int = 3, messages: int = 10) -> None:
    for n in range(messages):
        for user in range(users):
            context = ledger.open_context(f"u{user}", f"t{n % 2}", run_id=f"r{n}")
            if n % 4 == 3:
                ledger.clear_context(f"u{user}", context.context_id)


def snapshot(views: Projections) -> tuple[object, ...]:
    return (
        views.active_contexts(),
        views.audit_rows(),
        [views.continuity(f"u{user}") for user in range(3)],
        views.continuity(),
    )


def test_a_rebuild_equals_what_incremental_processing_built(
    ledger: ContextLedger, views: Projections
) -> None:
    chat(ledger)
    views.catch_up()
    incremental = snapshot(views)

    applied = views.rebuild()

    assert snapshot(views) == incremental
    assert applied == {
        "active": views.head(),
        "audit": views.head(),
        "continuity": views.head(),
    }
    assert [s.position for s in views.status()] == [views.head()] * 3


def test_readers_see_the_old_view_until_the_rebuild_is_swapped_in(
    durable_url: str, ledger: ContextLedger, views: Projections
) -> None:
    chat(ledger)
    views.catch_up()
    before = views.count_audit()
    seen_during: list[int] = []

    with Projections.open(durable_url) as reader:
        views.rebuild(
            ["audit"], on_batch=lambda _: seen_during.append(reader.count_audit())
        )

    assert seen_during
    assert set(seen_during) == {before}


def test_an_interrupted_rebuild_leaves_the_old_view_and_can_run_again(
    ledger: ContextLedger, views: Projections
) -> None:
    chat(ledger)
    views.catch_up()
    before = snapshot(views)

    def interrupt(_: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        views.rebuild(on_batch=interrupt)

    assert snapshot(views) == before
    assert views.verify() == {"active": [], "audit": [], "continuity": []}
    views.rebuild()
    assert snapshot(views) == before


def test_a_rebuild_under_a_running_worker_loses_and_repeats_nothing(
    durable_url: str, ledger: ContextLedger, views: Projections
) -> None:
    chat(ledger, messages=5)
    views.catch_up()
    with Projections.open(durable_url, batch_size=2) as worker:
        views.rebuild(on_batch=lambda _: chat(ledger, users=1, messages=1))
        chat(ledger, users=2, messages=2)

        worker.catch_up()

    assert views.count_audit() == views.head()
    assert views.verify() == {"active": [], "audit": [], "continuity": []}


def test_two_workers_at_once_apply_each_event_once(
    durable_url: str, ledger: ContextLedger
) -> None:
    chat(ledger, messages=20)
    workers = [Projections.open(durable_url, batch_size=3) for _ in range(2)]
    threads = [threading.Thread(target=w.catch_up) for w in workers]

    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert workers[0].count_audit() == workers[0].head()
    assert workers[0].verify() == {"active": [], "audit": [], "continuity": []}
    for worker in workers:
        worker.close()


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


def test_continuity_records_a_second_context_created_on_an_active_thread(
    durable_url: str, ledger: ContextLedger, views: Projections
) -> None:
    first = ledger.open_context("alice", "t1")
    append_raw_creation(durable_url, "alice", "t1")

    views.catch_up()

    figures = views.continuity("alice")
    assert (figures.created, figures.threads_with_overlap) == (2, 1)
    assert views.verify()["continuity"] == []
    overlap = views.audit_rows("alice")[-1]
    assert overlap.kind == "created"
    assert overlap.context_id != first.context_id


def test_follow_applies_events_as_they_arrive_until_stopped(
    ledger: ContextLedger, views: Projections
) -> None:
    stop = threading.Event()
    follower = threading.Thread(
        target=views.follow, args=(stop,), kwargs={"poll_seconds": 0.05}
    )
    follower.start()
    try:
        chat(ledger, users=2, messages=3)
        views.wait(views.head(), timeout=20)
    finally:
        stop.set()
        follower.join(timeout=20)

    assert not follower.is_alive()
    assert views.count_audit() == views.head()
