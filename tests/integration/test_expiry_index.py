"""DueIndex: the expiry times expire_due reads from the ledger's own log."""

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from eventsourcing.persistence import ApplicationRecorder, Notification

from ledger import ContextLedger
from ledger._store.due import DueIndex
from tests.helpers import OpenLedger

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
FAR_FUTURE = T0 + timedelta(days=10_000)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


class Clock:
    """The ledger's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def move_to(self, seconds: float) -> None:
        self.now = at(seconds)


class CountingRecorder:
    """The ledger's recorder, noting the id of every notification it hands out."""

    def __init__(self, recorder: ApplicationRecorder) -> None:
        self._recorder = recorder
        self.handed_out: list[int] = []

    def select_notifications(self, *args: Any, **kwargs: Any) -> Sequence[Notification]:
        page = self._recorder.select_notifications(*args, **kwargs)
        self.handed_out.extend(notification.id for notification in page)
        return page

    def __getattr__(self, name: str) -> Any:
        return getattr(self._recorder, name)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def open_on_file(tmp_path: Path, clock: Clock) -> Iterator[OpenLedger]:
    """Opens ledgers on one SQLite file with the hand-moved clock."""
    opened: list[ContextLedger] = []

    def _open(default_ttl_seconds: float | None = None) -> ContextLedger:
        ledger = ContextLedger.open(
            f"sqlite:///{tmp_path / 'l.db'}",
            default_ttl_seconds=default_ttl_seconds,
            clock=clock,
        )
        opened.append(ledger)
        return ledger

    yield _open
    for ledger in opened:
        ledger.close()


@pytest.fixture
def ledger(open_on_file: OpenLedger) -> ContextLedger:
    """A ledger on a SQLite file, without a default ttl."""
    return open_on_file()


def _caught_up(ledger: ContextLedger, index: DueIndex | None = None) -> DueIndex:
    index = index or DueIndex()
    index.catch_up(ledger._app.recorder, ledger._app.mapper)
    return index


def test_a_new_index_proposes_no_one() -> None:
    assert DueIndex().users_due(FAR_FUTURE) == []


def test_a_context_with_a_ttl_is_not_proposed_before_its_expiry(
    ledger: ContextLedger,
) -> None:
    ledger.open_context("alice", "t", ttl_seconds=60)

    index = _caught_up(ledger)

    assert index.users_due(at(59.999)) == []


def test_a_context_with_a_ttl_is_proposed_from_its_expiry_on(
    ledger: ContextLedger,
) -> None:
    ledger.open_context("alice", "t", ttl_seconds=60)

    index = _caught_up(ledger)

    assert index.users_due(at(60)) == ["alice"]
    assert index.users_due(FAR_FUTURE) == ["alice"]


def test_the_ledgers_default_ttl_is_proposed_like_a_given_one(
    open_on_file: OpenLedger,
) -> None:
    ledger = open_on_file(default_ttl_seconds=30)
    ledger.open_context("alice", "t")

    index = _caught_up(ledger)

    assert (index.users_due(at(29)), index.users_due(at(30))) == ([], ["alice"])


def test_a_context_without_a_ttl_is_never_proposed(ledger: ContextLedger) -> None:
    ledger.open_context("alice", "t")

    index = _caught_up(ledger)

    assert index.users_due(FAR_FUTURE) == []


def test_a_context_without_a_ttl_stays_unproposed_after_an_update(
    ledger: ContextLedger, clock: Clock
) -> None:
    context = ledger.open_context("alice", "t")
    clock.move_to(10)
    ledger.update_context("alice", context.context_id, metadata={"k": 1})

    index = _caught_up(ledger)

    assert index.users_due(FAR_FUTURE) == []


def test_a_reuse_slides_the_expiry(ledger: ContextLedger, clock: Clock) -> None:
    ledger.open_context("alice", "t", ttl_seconds=60)
    clock.move_to(50)
    ledger.open_context("alice", "t")

    index = _caught_up(ledger)

    assert (index.users_due(at(109)), index.users_due(at(110))) == ([], ["alice"])


def test_an_update_slides_the_expiry(ledger: ContextLedger, clock: Clock) -> None:
    context = ledger.open_context("alice", "t", ttl_seconds=60)
    clock.move_to(50)
    ledger.update_context("alice", context.context_id, metadata={"k": 1})

    index = _caught_up(ledger)

    assert (index.users_due(at(109)), index.users_due(at(110))) == ([], ["alice"])


def test_a_reuse_with_a_shorter_ttl_brings_the_expiry_forward(
    ledger: ContextLedger, clock: Clock
) -> None:
    ledger.open_context("alice", "t", ttl_seconds=600)
    clock.move_to(10)
    ledger.open_context("alice", "t", ttl_seconds=5)

    index = _caught_up(ledger)

    assert (index.users_due(at(14)), index.users_due(at(15))) == ([], ["alice"])


def test_a_cleared_context_leaves_the_index(ledger: ContextLedger) -> None:
    context = ledger.open_context("alice", "t", ttl_seconds=60)
    ledger.clear_context("alice", context.context_id, reason="done")

    index = _caught_up(ledger)

    assert index.users_due(FAR_FUTURE) == []


def test_an_expired_context_leaves_the_index(
    ledger: ContextLedger, clock: Clock
) -> None:
    ledger.open_context("alice", "t", ttl_seconds=60)
    clock.move_to(61)
    ledger.open_context("alice", "t")  # records the expiry, creates one without ttl

    index = _caught_up(ledger)

    assert index.users_due(FAR_FUTURE) == []


def test_expire_due_empties_the_index_it_has_acted_on(
    ledger: ContextLedger, clock: Clock
) -> None:
    ledger.open_context("alice", "t", ttl_seconds=60)
    clock.move_to(61)
    assert ledger.expire_due() == 1

    index = _caught_up(ledger)

    assert index.users_due(FAR_FUTURE) == []


def test_each_user_with_a_due_context_is_proposed_once_in_order(
    ledger: ContextLedger,
) -> None:
    ledger.open_context("carol", "t", ttl_seconds=10)
    ledger.open_context("alice", "t", ttl_seconds=10)
    ledger.open_context("alice", "u", ttl_seconds=20)
    ledger.open_context("bob", "t", ttl_seconds=60)
    ledger.open_context("dave", "t")

    index = _caught_up(ledger)

    assert index.users_due(at(30)) == ["alice", "carol"]


def test_a_user_stays_proposed_while_any_of_its_contexts_is_due(
    ledger: ContextLedger,
) -> None:
    ledger.open_context("alice", "t", ttl_seconds=10)
    other = ledger.open_context("alice", "u", ttl_seconds=10)
    ledger.clear_context("alice", other.context_id, reason="done")

    index = _caught_up(ledger)

    assert index.users_due(at(10)) == ["alice"]


def test_a_second_catch_up_sees_the_events_appended_since(
    ledger: ContextLedger, clock: Clock
) -> None:
    context = ledger.open_context("alice", "t", ttl_seconds=60)
    index = _caught_up(ledger)
    clock.move_to(30)
    ledger.update_context("alice", context.context_id, metadata={"k": 1})
    ledger.open_context("bob", "t", ttl_seconds=10)

    _caught_up(ledger, index)

    assert index.users_due(at(60)) == ["bob"]
    assert index.users_due(at(90)) == ["alice", "bob"]


def test_a_second_catch_up_reads_only_the_events_appended_since(
    ledger: ContextLedger,
) -> None:
    ledger.open_context("alice", "t", ttl_seconds=60)
    ledger.open_context("bob", "t", ttl_seconds=60)
    recorder = CountingRecorder(ledger._app.recorder)
    index = DueIndex()
    index.catch_up(cast(ApplicationRecorder, recorder), ledger._app.mapper)
    first = list(recorder.handed_out)
    ledger.open_context("carol", "t", ttl_seconds=60)

    index.catch_up(cast(ApplicationRecorder, recorder), ledger._app.mapper)

    assert len(first) == 2
    assert len(recorder.handed_out) == 3
    assert recorder.handed_out[2] > max(first)


def test_a_catch_up_with_nothing_new_reads_nothing(ledger: ContextLedger) -> None:
    ledger.open_context("alice", "t", ttl_seconds=60)
    recorder = CountingRecorder(ledger._app.recorder)
    index = DueIndex()
    index.catch_up(cast(ApplicationRecorder, recorder), ledger._app.mapper)
    recorder.handed_out.clear()

    index.catch_up(cast(ApplicationRecorder, recorder), ledger._app.mapper)

    assert recorder.handed_out == []
    assert index.users_due(at(60)) == ["alice"]


def test_a_catch_up_reads_every_page_of_a_long_log(
    ledger: ContextLedger, clock: Clock
) -> None:
    ledger.open_context("alice", "t", ttl_seconds=60)
    for second in range(1, 1101):
        clock.move_to(second)
        ledger.open_context("alice", "t")

    index = _caught_up(ledger)

    assert (index.users_due(at(1159)), index.users_due(at(1160))) == ([], ["alice"])
