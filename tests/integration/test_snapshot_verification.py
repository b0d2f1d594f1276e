"""Snapshots of format 3: sealed always, under associated data that binds the
digest of the rest of their state, so verify_chain checks one by opening it and
comparing it with its event, without a replay. Snapshots of format 2 (stored by
the previous release) are still read, and checked by a replay of the events.

Each test edits the stored snapshots with SQL, as an intruder with database
access would, on a real SQLite file and a real PostgreSQL schema.
"""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from eventsourcing.persistence import MapperDeserialisationError, StoredEvent
from freezegun import freeze_time
from msgpack import ExtType

from ledger import ContextLedger
from ledger._domain.contexts import UserSnapshot, project_user, user_aggregate_id
from ledger._store.application import SNAPSHOT_INTERVAL
from ledger._store.serialization import MsgpackTranscoder, PydanticMapper
from tests.tampering import (
    execute_sql,
    store_snapshot,
    store_snapshot_as_format_2,
    stored_snapshots,
    stream_key,
)

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
_CODEC = MsgpackTranscoder()


def _history(url: str, user: str, events: int) -> None:
    """``events`` events: a context opened, reused with a request id, then
    cleared, so the snapshot at SNAPSHOT_INTERVAL has contexts and requests."""
    with ContextLedger.open(url) as ledger, freeze_time(START) as clock:
        turn = 0
        while len(ledger.history(user)) < events:
            opened = ledger.open_context(user, "t1", metadata={"turn": turn})
            ledger.open_context(user, "t2", request_id=f"req-{turn}")
            if turn % 2:
                ledger.clear_context(user, opened.context_id)
            clock.tick(1)
            turn += 1


def _fault(url: str, user: str | None = None) -> tuple[int, str] | None:
    with ContextLedger.open(url) as ledger:
        report = ledger.verify_chain(user)
    broken = report.broken
    if not broken:
        return None
    fault = broken[0].fault
    assert fault is not None
    return fault.version, fault.fault


def test_a_snapshot_is_stored_in_format_3_and_sealed_even_without_contexts(
    durable_url: str,
) -> None:
    with ContextLedger.open(durable_url) as ledger:
        for turn in range(SNAPSHOT_INTERVAL // 2):
            opened = ledger.open_context("ann", "t1", metadata={"turn": turn})
            ledger.clear_context("ann", opened.context_id)

    ((version, state),) = stored_snapshots(durable_url, "ann")

    assert version == SNAPSHOT_INTERVAL
    assert state["format"] == 3
    assert state["contexts"] == []
    assert isinstance(state["sealed"], bytes)
    assert _fault(durable_url) is None


def _later(value: Any) -> Any:
    return value + timedelta(seconds=1)


EDITS: dict[str, Any] = {
    "contexts": lambda s: s["contexts"][0].update(thread_id="elsewhere"),
    "context time": lambda s: s["contexts"][0].update(
        last_used_at=_later(s["contexts"][0]["last_used_at"])
    ),
    "timestamp": lambda s: s.update(timestamp=_later(s["timestamp"])),
    "created_on": lambda s: s.update(created_on=_later(s["created_on"])),
    "modified_on": lambda s: s.update(modified_on=_later(s["modified_on"])),
    "last_hash": lambda s: s.update(last_hash="0" * 64),
    "requests": lambda s: s["requests"][0].__setitem__(0, "forged"),
    "request dropped": lambda s: s["requests"].pop(),
    "key_generation": lambda s: s.update(key_generation=1),
    "forgotten_at": lambda s: s.update(forgotten_at=3),
    "user_id": lambda s: s.update(user_id="mallory"),
    "format lowered": lambda s: s.update(format=2),
    "sealed removed": lambda s: s.pop("sealed"),
    "sealed altered": lambda s: s.update(sealed=s["sealed"][:-1] + b"\x00"),
    "field added": lambda s: s.update(extra=1),
    "time of a wrong length": lambda s: s.update(timestamp=ExtType(1, b"\x00\x01")),
    "time out of range": lambda s: s.update(
        timestamp=ExtType(1, (2**62).to_bytes(8, "big"))
    ),
}


@pytest.mark.parametrize("edit", EDITS, ids=list(EDITS))
def test_an_edited_field_of_a_format_3_snapshot_is_altered_and_not_used(
    durable_url: str, edit: str
) -> None:
    _history(durable_url, "erin", SNAPSHOT_INTERVAL + 5)
    with ContextLedger.open(durable_url) as ledger:
        last = ledger.history("erin")[-1].occurred_at
        before = _state(ledger, last)
    ((version, state),) = stored_snapshots(durable_url, "erin")
    assert state["format"] == 3
    assert state["contexts"]
    assert state["requests"]
    EDITS[edit](state)
    store_snapshot(durable_url, "erin", version, state)

    with ContextLedger.open(durable_url) as ledger:
        after = _state(ledger, last)

    assert _fault(durable_url) == (version, "altered")
    assert _fault(durable_url, "erin") == (version, "altered")
    # Neither loading (for commands and reads) nor an as-of read starts from it.
    assert after == before


def _state(ledger: ContextLedger, at: datetime) -> tuple[object, ...]:
    """What a fresh process makes of erin: the aggregate it loads (the store
    decides, no cache) and her contexts as of ``at`` (after the snapshot)."""
    loaded = ledger._app.load("erin", at)
    return (
        loaded.version,
        loaded.last_hash,
        loaded.contexts,
        dict(loaded.requests),
        ledger.contexts_as_of("erin", at),
    )


def test_a_forged_format_2_snapshot_is_not_carried_into_later_snapshots(
    durable_url: str,
) -> None:
    """An intruder downgrades a snapshot to format 2 (no digest) with a forged
    creation time. Loading does not start from it (format 2 is not authenticated),
    so the snapshots written later hold the replayed state, and once the forged
    one is deleted the chain holds with the true state."""
    _history(durable_url, "kim", SNAPSHOT_INTERVAL + 1)
    ((version, state),) = stored_snapshots(durable_url, "kim")
    state.pop("sealed")
    state["format"] = 2
    forged = START - timedelta(days=30)
    for context in state["contexts"]:
        context.update(created_at=forged, expires_at=None, ttl_seconds=None)
    store_snapshot(durable_url, "kim", version, state)
    assert _fault(durable_url, "kim") == (version, "altered")

    with ContextLedger.open(durable_url) as ledger, freeze_time(START):
        for _ in range(SNAPSHOT_INTERVAL):
            ledger.open_context("kim", "t2")
        served = ledger.active_contexts("kim")
    execute_sql(
        durable_url,
        "DELETE FROM {snapshots} WHERE originator_id = {p} "
        "AND originator_version = {p}",
        (stream_key(durable_url, "kim"), version),
    )

    assert _fault(durable_url) is None
    assert served
    assert all(context.created_at != forged for context in served)
    with ContextLedger.open(durable_url) as ledger:
        replayed = project_user(None, ledger._app.events_after("kim", 0))
        assert replayed is not None
        loaded = ledger._app.load("kim", START)
        assert loaded.contexts == replayed.contexts


def test_a_format_3_snapshot_moved_to_another_version_is_altered(
    durable_url: str,
) -> None:
    _history(durable_url, "eve", 2 * SNAPSHOT_INTERVAL + 5)
    (_, state), (second, _) = stored_snapshots(durable_url, "eve")
    store_snapshot(durable_url, "eve", second, state)

    assert _fault(durable_url) == (second, "altered")


def test_only_the_user_with_an_edited_snapshot_is_broken(durable_url: str) -> None:
    _history(durable_url, "erin", SNAPSHOT_INTERVAL + 5)
    _history(durable_url, "fred", SNAPSHOT_INTERVAL + 5)
    ((version, state),) = stored_snapshots(durable_url, "erin")
    state["last_hash"] = "1" * 64
    store_snapshot(durable_url, "erin", version, state)

    with ContextLedger.open(durable_url) as ledger:
        report = ledger.verify_chain()

    assert [user.user_id for user in report.broken] == ["erin"]
    assert report.events == 2 * (SNAPSHOT_INTERVAL + 5)


def test_a_format_2_snapshot_is_still_read_and_holds(durable_url: str) -> None:
    _history(durable_url, "gil", SNAPSHOT_INTERVAL + 5)
    with ContextLedger.open(durable_url) as ledger:
        active = ledger.active_contexts("gil")
    version = store_snapshot_as_format_2(durable_url, "gil")
    stream = user_aggregate_id("gil")

    with ContextLedger.open(durable_url) as ledger:
        assert ledger._app.snapshots is not None
        with ledger._app.keys.reading():
            (read,) = ledger._app.snapshots.get(stream, desc=True, limit=1)
        assert ledger.active_contexts("gil") == active
    assert stored_snapshots(durable_url, "gil")[0][1]["format"] == 2
    assert isinstance(read, UserSnapshot)
    assert read.originator_version == version
    assert read.contexts
    assert _fault(durable_url) is None
    assert _fault(durable_url, "gil") is None


@pytest.mark.parametrize("edit", ["contexts", "requests", "forgotten_at"])
def test_an_edited_format_2_snapshot_is_found_by_the_replay(
    durable_url: str, edit: str
) -> None:
    _history(durable_url, "hana", SNAPSHOT_INTERVAL + 5)
    version = store_snapshot_as_format_2(durable_url, "hana")
    ((_, state),) = stored_snapshots(durable_url, "hana")
    EDITS[edit](state)  # still opens: format 2 binds no digest
    store_snapshot(durable_url, "hana", version, state)

    assert _fault(durable_url) == (version, "altered")
    assert _fault(durable_url, "hana") == (version, "altered")


def test_a_snapshot_of_a_newer_format_asks_for_an_upgrade(sqlite_url: str) -> None:
    _history(sqlite_url, "ivy", SNAPSHOT_INTERVAL + 5)
    ((version, state),) = stored_snapshots(sqlite_url, "ivy")
    state["format"] = 4
    store_snapshot(sqlite_url, "ivy", version, state)
    stored = StoredEvent(
        originator_id=user_aggregate_id("ivy"),
        originator_version=version,
        topic=UserSnapshot.TOPIC,
        state=_CODEC.encode(state),
    )

    with ContextLedger.open(sqlite_url) as ledger:
        mapper = ledger._app.mapper
        assert isinstance(mapper, PydanticMapper)
        with pytest.raises(MapperDeserialisationError, match="upgrade ctxledger"):
            mapper.to_domain_event(stored)
        with pytest.raises(ValueError, match="upgrade ctxledger"):
            mapper.authentic_snapshot(stored)
    assert _fault(sqlite_url) == (version, "altered")
