"""Every event survives the msgpack encoding unchanged."""

from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import pytest
from eventsourcing.persistence import MapperDeserialisationError, StoredEvent
from freezegun import freeze_time
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from ledger._domain.contexts import UserSnapshot
from ledger._domain.events import (
    CarriesMetadata,
    ContextCleared,
    ContextCreated,
    ContextEvent,
    ContextExpired,
    ContextReused,
    ContextUpdated,
    UserForgotten,
    written_record,
)
from ledger._domain.hashing import (
    canonical_encoding,
    chain_hash,
    metadata_commitment,
    record_hash,
)
from ledger._domain.models import Context
from ledger._store.keys import MemoryKeyStore
from ledger._store.serialization import MsgpackTranscoder, PydanticMapper

MAPPER = PydanticMapper(transcoder=MsgpackTranscoder())
MAPPER.keys = MemoryKeyStore(None)

leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3)
    ),
    max_leaves=12,
)
metadata = st.dictionaries(st.text(max_size=10), json_values, max_size=4)
times = st.datetimes(
    min_value=datetime(1971, 1, 1),  # noqa: DTZ001  (hypothesis bounds are naive)
    max_value=datetime(2200, 1, 1),  # noqa: DTZ001
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]),
)
ids = st.text(min_size=1, max_size=20)
ttls = st.none() | st.floats(min_value=0.001, max_value=1e9)
envelope: dict[str, Any] = {
    "originator_id": st.uuids(),
    "originator_version": st.integers(min_value=1, max_value=2**31),
    "timestamp": times,
    "user_id": ids,
    "context_id": ids,
    "thread_id": ids,
    "run_id": st.none() | ids,
    "prev_hash": st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
}
events = st.one_of(
    st.builds(ContextCreated, metadata=metadata, ttl_seconds=ttls, **envelope),
    st.builds(
        ContextReused,
        metadata=metadata,
        ttl_seconds=ttls,
        reuse_count=st.integers(0, 10**6),
        **envelope,
    ),
    st.builds(ContextUpdated, metadata=metadata, **envelope),
    st.builds(ContextExpired, reason=st.text(min_size=1), expires_at=times, **envelope),
    st.builds(ContextCleared, reason=st.text(min_size=1), **envelope),
    st.builds(
        UserForgotten,
        reason=st.text(min_size=1),
        key_generation=st.integers(0, 100),
        **{**envelope, "context_id": st.just(""), "thread_id": st.just("")},
    ),
)


def _round_trip(event: BaseModel) -> object:
    return MAPPER.to_domain_event(MAPPER.to_stored_event(event))  # type: ignore[arg-type]


@given(events)
def test_every_event_round_trips_through_msgpack(event: ContextEvent) -> None:
    decoded = _round_trip(event)

    assert decoded == event
    assert isinstance(decoded, ContextEvent)
    assert decoded.to_ledger_event() == event.to_ledger_event()


@given(events)
def test_decoded_times_are_utc(event: ContextEvent) -> None:
    decoded = _round_trip(event)

    assert isinstance(decoded, ContextEvent)
    assert decoded.timestamp.utcoffset() == timedelta(0)


def test_freezegun_datetimes_are_encoded() -> None:
    with freeze_time("2026-07-01 10:00:00"):
        now = datetime.now(tz=UTC)
        event = ContextCleared(
            originator_id=UUID(int=1),
            originator_version=1,
            timestamp=now,
            user_id="u",
            context_id="c",
            thread_id="t",
            run_id=None,
            prev_hash="0" * 64,
            reason="r",
        )
        assert type(now).__name__ == "FakeDatetime"

        assert _round_trip(event) == event


@given(events, st.binary(min_size=32, max_size=32))
def test_sealed_events_round_trip_and_store_no_plain_metadata(
    event: ContextEvent, salt: bytes
) -> None:
    """Format 2: the metadata and its salt are sealed; the rest reads back equal."""
    if not isinstance(event, CarriesMetadata):
        return
    assert event.metadata is not None
    sealed = event.model_copy(
        update={
            "metadata_salt": salt.hex(),
            "metadata_commitment": metadata_commitment(salt.hex(), event.metadata),
        }
    )
    stored = MAPPER.to_stored_event(sealed)
    state = MsgpackTranscoder().decode(stored.state)

    assert "metadata" not in state
    assert "metadata_salt" not in state
    assert salt not in stored.state
    decoded = _round_trip(sealed)
    assert decoded == sealed
    assert isinstance(decoded, ContextEvent)
    assert decoded.chain_record() == sealed.chain_record()
    assert chain_hash(decoded.ledger_record()) == record_hash(sealed.chain_record())


@given(events)
def test_the_written_form_is_the_json_form_when_nothing_was_upcast(
    event: ContextEvent,
) -> None:
    """``written_record`` (from a stored state, as the mapper builds it for an
    upcast event) and ``ledger_record`` (from the model) agree byte for byte."""
    state = MsgpackTranscoder().decode(MAPPER.to_stored_event(event).state)
    assert state.pop("format") == 2  # the mapper reads it before the rest
    state["originator_id"] = event.originator_id
    state["originator_version"] = event.originator_version

    written = written_record(event.KIND, state)

    assert canonical_encoding(written) == canonical_encoding(event.ledger_record())


def test_snapshots_round_trip() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    context = Context(
        context_id="c",
        user_id="u",
        thread_id="t",
        run_id="r",
        metadata={"a": [1]},
        created_at=at,
        last_used_at=at,
        expires_at=None,
        ttl_seconds=None,
    )
    snapshot = UserSnapshot(
        originator_id=UUID(int=7),
        originator_version=50,
        timestamp=at,
        user_id="u",
        created_on=at,
        modified_on=at,
        last_hash="f" * 64,
        contexts=[context],
    )

    assert _round_trip(snapshot) == snapshot


def test_a_corrupt_stored_event_names_its_stream_and_version() -> None:
    stored = StoredEvent(
        originator_id=UUID(int=3),
        originator_version=17,
        topic=ContextCleared.TOPIC,
        state=b"\xc1 not msgpack",
    )

    with pytest.raises(
        MapperDeserialisationError, match="version 17 cannot be decoded"
    ):
        MAPPER.to_domain_event(stored)


def test_an_unknown_topic_is_an_error_not_a_silent_skip() -> None:
    stored = StoredEvent(
        originator_id=UUID(int=3),
        originator_version=2,
        topic="other:Event",
        state=b"\x80",
    )

    with pytest.raises(MapperDeserialisationError, match="'other:Event'"):
        MAPPER.to_domain_event(stored)


def test_naive_datetimes_are_refused_by_the_transcoder() -> None:
    with pytest.raises(TypeError, match="naive datetime"):
        MsgpackTranscoder().encode({"at": datetime(2026, 1, 1)})  # noqa: DTZ001
