"""Events outlive their classes: a version-2 class reads what version 1 wrote.

The events here are stored by today's ``ContextCreated`` (version 1). The test
then puts a version-2 class in its place, which adds a field, and reads them
back through replay, the views and verification, on SQLite and PostgreSQL.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from ledger import ContextLedger, LedgerCorrupted, verify_export
from ledger._domain.events import ContextCreated
from ledger._store.serialization import MsgpackTranscoder, register
from projections import Projections
from tests.tampering import execute_sql, stream_key


class ContextCreatedV2(ContextCreated):
    """Version 2 of the creation event: it records the channel it came from."""

    class_version: ClassVar[int] = 2
    channel: str

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        state["channel"] = "unknown"  # events of version 1 did not record it


@pytest.fixture
def version_2() -> Iterator[type[ContextCreated]]:
    replaced = register(ContextCreatedV2)
    yield ContextCreatedV2
    register(replaced)


def _written_by_version_1(url: str) -> str:
    with ContextLedger.open(url) as ledger:
        first = ledger.open_context("alice", "t1", metadata={"topic": "billing"})
        for n in range(60):  # past a snapshot
            ledger.open_context("alice", "t1", metadata={"n": n})
        ledger.open_context("bob", "t1", metadata={"topic": "other"})
    return first.context_id


def test_a_version_2_class_reads_version_1_events(
    durable_url: str, version_2: type[ContextCreated], tmp_path: Path
) -> None:
    context_id = _written_by_version_1(durable_url)

    with ContextLedger.open(durable_url) as ledger:
        history = ledger.history("alice")
        assert history[0].details["channel"] == "unknown"
        assert history[0].details["metadata"] == {"topic": "billing"}
        current = ledger.get_context("alice", "t1")
        assert current is not None
        assert current.context_id == context_id
        assert current.reuse_count == 60
        as_of = ledger.contexts_as_of("alice", history[10].occurred_at)
        assert [c.context_id for c in as_of] == [context_id]
        # The chain covers the events as written, not as upcast.
        assert ledger.verify_chain().holds
        assert ledger.verify_chain("alice").holds
        # Exports carry the written form, so they verify offline.
        path = tmp_path / "alice.jsonl"
        ledger.export("alice", path)
        assert verify_export(path).intact
        assert b'"channel"' not in path.read_bytes()
        # New events go on from the upcast state; the chain still holds.
        ledger.open_context("alice", "t1", metadata={"more": 1})
        ledger.forget_user("bob")
        assert ledger.verify_chain().holds

    with Projections.open(durable_url) as views:
        views.rebuild()
        rows = views.audit_rows(user_id="alice")
        assert rows[0].details["channel"] == "unknown"
        assert views.verify() == {"active": [], "audit": [], "continuity": []}
        assert views.continuity("alice").created == 1


def test_an_event_of_version_2_stores_its_class_version(
    version_2: type[ContextCreated], sqlite_url: str
) -> None:
    """A class_version above 1 is stored, and read back without upcasting."""
    with ContextLedger.open(sqlite_url) as ledger:
        ledger.open_context("alice", "t1", metadata={"a": 1})
        event = ledger._app.events_between_versions("alice", 1, 1)[0]
        newer = ContextCreatedV2.model_validate(
            {**event.model_dump(), "channel": "chat"}
        )
        mapper = ledger._app.mapper
        stored = mapper.to_stored_event(newer)
        assert mapper.transcoder.decode(stored.state)["class_version"] == 2
        read = mapper.to_domain_event(stored)

    assert isinstance(read, ContextCreatedV2)
    assert read.channel == "chat"
    assert read.metadata == {"a": 1}
    assert read.written_record() == read.ledger_record()


class ContextCreatedV3(ContextCreatedV2):
    """A version 3 that forgot its upcast from version 2."""

    class_version: ClassVar[int] = 3


def test_a_missing_upcast_is_a_corrupted_user_not_a_crash(sqlite_url: str) -> None:
    _written_by_version_1(sqlite_url)
    replaced = register(ContextCreatedV3)
    try:
        with ContextLedger.open(sqlite_url) as ledger:
            with pytest.raises(LedgerCorrupted, match="upcast_v2_v3"):
                ledger.history("alice")
            # Verification reads them too: it names the user and the cause.
            report = ledger.verify_chain()
            assert [user.user_id for user in report.broken] == ["alice", "bob"]
            assert all("upcast_v2_v3" in str(u.fault) for u in report.broken)
    finally:
        register(replaced)


def test_events_carry_their_format_and_a_newer_one_is_named(durable_url: str) -> None:
    _written_by_version_1(durable_url)
    key = stream_key(durable_url, "bob")
    rows = execute_sql(
        durable_url,
        "SELECT state FROM {events} WHERE originator_id = {p}",
        (key,),
    )
    state = MsgpackTranscoder().decode(bytes(rows[0][0]))
    assert state["format"] == 2
    assert "sealed" in state
    assert "metadata" not in state
    state["format"] = 3
    execute_sql(
        durable_url,
        "UPDATE {events} SET state = {p} WHERE originator_id = {p}",
        (MsgpackTranscoder().encode(state), key),
    )

    with ContextLedger.open(durable_url) as ledger:
        with pytest.raises(LedgerCorrupted, match="newer release"):
            ledger.history("bob")
        assert ledger.history("alice")  # other users read on
