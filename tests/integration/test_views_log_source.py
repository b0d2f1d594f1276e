"""The views read the ledger through ``ledger.log_source`` only: its batches of
decoded events, its keys for view cells, and a batch read ahead that changes when
a batch is read, never what it holds."""

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from ledger import ContextLedger
from ledger.log_source import LogSource, locate
from projections._reader import LogReader, ReadAhead
from tests.helpers import chat
from tests.tampering import execute_sql

PROJECTIONS = Path(__file__).resolve().parents[2] / "projections"


@pytest.fixture
def ledger(durable_url: str) -> Iterator[ContextLedger]:
    with ContextLedger.open(durable_url) as opened:
        yield opened


@pytest.fixture
def source(durable_url: str, ledger: ContextLedger) -> Iterator[LogSource]:
    opened = LogSource.open(locate(durable_url), create=False)
    try:
        yield opened
    finally:
        opened.close()


def _imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_projections_import_nothing_from_ledger_store() -> None:
    reaching_in = {
        f"{path.name}: {module}"
        for path in PROJECTIONS.glob("*.py")
        for module in _imported_modules(path)
        if module == "ledger._store" or module.startswith("ledger._store.")
    }

    assert reaching_in == set()


def test_a_batch_holds_the_events_after_a_position_in_log_order(
    ledger: ContextLedger, source: LogSource
) -> None:
    chat(ledger, users=2, messages=3)

    batch = source.batch(2, 3)

    assert [position for position, _ in batch.events] == [3, 4, 5]
    assert [event.version for _, event in batch.events] == [2, 2, 3]
    assert batch.undecodable is None
    assert source.head() == 6


def test_a_batch_stops_before_an_undecodable_event_and_names_it(
    durable_url: str, ledger: ContextLedger, source: LogSource
) -> None:
    chat(ledger, users=1, messages=3)
    execute_sql(
        durable_url, "UPDATE {events} SET state = {c1} WHERE originator_version = 2"
    )

    batch = source.batch(0, 10)

    assert [position for position, _ in batch.events] == [1]
    assert batch.undecodable is not None
    assert batch.undecodable[0] == 2


def test_a_view_cell_opens_for_its_user_only_and_not_once_the_user_is_forgotten(
    ledger: ContextLedger, source: LogSource
) -> None:
    ledger.open_context("alice", "t", metadata={"plan": "pro"})
    ledger.open_context("bob", "t", metadata={"plan": "free"})
    keys = source.keys

    with keys.reading():
        sealed = keys.seal_cell("alice", 0, b'{"plan": "pro"}')
        assert sealed is not None
        assert keys.open_cell("alice", 0, sealed) == b'{"plan": "pro"}'
        with pytest.raises(ValueError, match="does not open"):
            keys.open_cell("bob", 0, sealed)
    ledger.forget_user("alice")
    with keys.reading():
        assert keys.open_cell("alice", 0, sealed) is None
        assert keys.seal_cell("alice", 0, b"{}") is None


def test_a_batch_read_ahead_serves_only_the_request_it_was_read_for(
    ledger: ContextLedger, source: LogSource
) -> None:
    chat(ledger, users=1, messages=8)
    reader = LogReader(source)
    head = source.head()

    with ReadAhead(reader) as ahead:
        first = ahead.batch(0, 3, head)
        # Not the batch read ahead (it starts after 3): read anew, from 1.
        other = ahead.batch(1, 3, head)
        following = ahead.batch(4, 3, head)

    assert [p for p, _ in first] == [1, 2, 3]
    assert [p for p, _ in other] == [2, 3, 4]
    assert [p for p, _ in following] == [5, 6, 7]
    assert [e.version for _, e in following] == [
        e.version for _, e in reader.batch(4, 3, head)
    ]
