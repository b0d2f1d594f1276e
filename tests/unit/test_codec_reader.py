"""The one decoder of stored events: its fast path, the mapper, and the reads
verification makes with them, on states altered every way."""

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgpack
import pytest
from eventsourcing.persistence import MapperDeserialisationError, StoredEvent
from hypothesis import given
from hypothesis import strategies as st

from ledger._domain.contexts import user_aggregate_id
from ledger._domain.events import (
    ContextCleared,
    ContextCreated,
    ContextEvent,
    ContextExpired,
    UserForgotten,
)
from ledger._domain.hashing import GENESIS_HASH, metadata_commitment, record_hash
from ledger._store.chain_reads import Read, exact_read
from ledger._store.keys import MemoryKeyStore
from ledger._store.records import EventRecord, RecordReader
from ledger._store.serialization import MsgpackTranscoder, PydanticMapper

MAPPER = PydanticMapper(transcoder=MsgpackTranscoder())
MAPPER.keys = MemoryKeyStore(None)
READER = RecordReader(MAPPER, MAPPER.keys)
STREAM = user_aggregate_id("alice")
AT = datetime(2026, 5, 1, 12, tzinfo=UTC)
SALT = "ab" * 32
ENVELOPE: dict[str, Any] = {
    "originator_id": STREAM,
    "timestamp": AT,
    "user_id": "alice",
    "context_id": "c1",
    "thread_id": "t1",
    "run_id": "r1",
    "prev_hash": GENESIS_HASH,
}
EVENTS: list[ContextEvent] = [
    ContextCreated(
        **ENVELOPE,
        originator_version=1,
        metadata={"a": [1, 2.5, None]},
        metadata_salt=SALT,
        metadata_commitment=metadata_commitment(SALT, {"a": [1, 2.5, None]}),
        ttl_seconds=30.0,
        request_id="req-1",
    ),
    ContextCreated(
        **ENVELOPE, originator_version=2, metadata={"plain": True}, ttl_seconds=None
    ),
    ContextExpired(**ENVELOPE, originator_version=3, reason="ttl", expires_at=AT),
    ContextCleared(**ENVELOPE, originator_version=4, reason="done", command_id="x"),
    UserForgotten(
        **{**ENVELOPE, "context_id": "", "thread_id": ""},
        originator_version=5,
        reason="asked",
        key_generation=0,
    ),
]
STORED = [MAPPER.to_stored_event(event) for event in EVENTS]
STATES = [msgpack.unpackb(s.state, raw=False, ext_hook=msgpack.ExtType) for s in STORED]

integers = st.integers(-(2**63), 2**64 - 1)  # what msgpack stores
hostile: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    integers,
    st.floats(),
    st.text(max_size=3),
    st.binary(max_size=3),
    st.lists(integers, max_size=2),
)
names = st.sampled_from(
    [
        *sorted({name for state in STATES for name in state}),
        *("format", "class_version", "key_generation", "metadata", "note"),
    ]
)
changes = st.dictionaries(names, hostile | st.just(...), min_size=1, max_size=3)


def _altered(index: int, change: dict[str, Any]) -> StoredEvent:
    state = dict(STATES[index])
    for name, value in change.items():
        if value is ...:
            state.pop(name, None)
        else:
            state[name] = value
    return StoredEvent(
        originator_id=STREAM,
        originator_version=STORED[index].originator_version,
        topic=STORED[index].topic,
        state=msgpack.packb(state, use_bin_type=True),
    )


def _outcome(read: Any) -> object:
    try:
        record = read()
    except MapperDeserialisationError:
        return "refused"
    return repr(
        (record.KIND, record.details, record.key_generation, record.ledger_record())
    )


def test_each_event_this_release_writes_reads_fast_and_as_the_domain() -> None:
    with READER.keys.reading():
        for stored, event in zip(STORED, EVENTS, strict=True):
            record = READER.read(stored)

            assert record.plain_json, stored.topic
            assert record.ledger_record() == event.ledger_record()
            assert record.chain_record() == event.chain_record()
            assert record.to_ledger_event() == event.to_ledger_event()


@given(st.integers(0, len(EVENTS) - 1), changes)
def test_an_altered_state_reads_alike_on_the_fast_path_and_through_the_mapper(
    index: int, change: dict[str, Any]
) -> None:
    stored = _altered(index, change)

    fast = _outcome(lambda: READER.read(stored))
    domain = _outcome(lambda: _domain_record(stored))

    assert fast == domain


def _domain_record(stored: StoredEvent) -> EventRecord:
    event = MAPPER.to_domain_event(stored)
    assert isinstance(event, ContextEvent)
    return EventRecord.of_event(event)


@given(st.integers(0, len(EVENTS) - 1), changes)
def test_verification_finds_every_state_the_reader_refuses(
    index: int, change: dict[str, Any]
) -> None:
    stored = _altered(index, change)

    refused = _outcome(lambda: READER.read(stored)) == "refused"
    read = exact_read(stored, READER)

    if refused:
        assert isinstance(read, str)
        assert read.startswith("it cannot be decoded")


@given(st.binary(max_size=64), st.sampled_from([s.topic for s in STORED]))
def test_any_bytes_at_all_are_read_or_refused_as_undecodable(
    state: bytes, topic: str
) -> None:
    stored = StoredEvent(
        originator_id=STREAM, originator_version=1, topic=topic, state=state
    )

    outcome = _outcome(lambda: READER.read(stored))

    assert outcome == "refused" or isinstance(outcome, str)


def test_a_stored_snapshot_in_the_events_is_refused_as_undecodable() -> None:
    stored = StoredEvent(
        originator_id=STREAM,
        originator_version=1,
        topic="ctxledger:UserSnapshot",
        state=STORED[0].state,
    )

    with pytest.raises(MapperDeserialisationError):
        READER.read(stored)


def test_exact_read_hashes_what_the_domain_events_chain_record_is() -> None:
    for stored, event in zip(STORED, EVENTS, strict=True):
        read = exact_read(stored, READER)

        assert isinstance(read, Read)
        assert read[:4] == (
            "alice",
            GENESIS_HASH,
            record_hash(event.chain_record()),
            AT,
        )
        assert read.record.chain_record() == event.chain_record()


def test_exact_read_names_an_event_whose_user_owns_another_stream() -> None:
    moved = StoredEvent(
        originator_id=UUID(int=7),
        originator_version=STORED[3].originator_version,
        topic=STORED[3].topic,
        state=STORED[3].state,
    )

    assert exact_read(moved, READER) == (
        "it names user 'alice', who owns another stream"
    )


def test_exact_read_names_metadata_that_is_not_what_its_commitment_was_made_of() -> (
    None
):
    planted = _altered(0, {"metadata": {"a": "planted"}, "metadata_salt": SALT})

    assert exact_read(planted, READER) == (
        "its metadata is not what its metadata_commitment was made of"
    )
