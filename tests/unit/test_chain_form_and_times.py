"""The chain form's rule and the stored time encoding, as the fast read paths use
them: the details the chain covers are the same whichever way they are built, and
a stored time decodes to the exact microsecond it was written at."""

from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger._domain.hashing import SEALED_DETAILS, chain_details, chain_form
from ledger._store.codec import MsgpackTranscoder, ext_hook

SEALED_RECORD: dict[str, Any] = {
    "user_id": "u",
    "kind": "reused",
    "details": {
        "metadata": {"turn": 1},
        "metadata_salt": "ab" * 32,
        "metadata_commitment": "cd" * 32,
        "key_generation": 0,
        "reuse_count": 3,
    },
}


def test_sealed_details_are_left_out_of_the_chain_without_touching_the_record() -> None:
    kept = chain_details(SEALED_RECORD["details"])
    assert kept == {
        "metadata_commitment": "cd" * 32,
        "key_generation": 0,
        "reuse_count": 3,
    }
    assert not set(SEALED_DETAILS) & set(kept)
    assert "metadata" in SEALED_RECORD["details"]
    assert chain_form(SEALED_RECORD)["details"] == kept


def test_plain_details_are_covered_whole_and_not_copied() -> None:
    details = {"metadata": {"turn": 1}, "reuse_count": 1}
    assert chain_details(details) is details
    assert chain_form({"details": details}) == {"details": details}


def test_an_erased_event_covers_only_its_commitment() -> None:
    details = {"erased": True, "metadata": None, "metadata_commitment": "ef" * 32}
    assert chain_details(details) == {"metadata_commitment": "ef" * 32}


@given(
    st.datetimes(
        min_value=datetime(1, 1, 2),  # noqa: DTZ001  (hypothesis wants naive bounds)
        max_value=datetime(9999, 12, 30),  # noqa: DTZ001
        timezones=st.just(UTC),
    )
)
def test_a_stored_time_decodes_to_the_exact_microsecond(at: datetime) -> None:
    assert MsgpackTranscoder().decode(MsgpackTranscoder().encode(at)) == at


def test_a_stored_time_out_of_range_is_refused_as_overflow() -> None:
    too_late = (2**62).to_bytes(8, "big", signed=True)
    with pytest.raises(OverflowError):
        ext_hook(1, too_late)
    micros = (datetime(2026, 1, 1, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // (
        timedelta(microseconds=1)
    )
    packed = msgpack.ExtType(1, micros.to_bytes(8, "big", signed=True))
    assert MsgpackTranscoder().decode(msgpack.packb(packed)) == datetime(
        2026, 1, 1, tzinfo=UTC
    )
