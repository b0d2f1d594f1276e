"""find_break: where a chain of stored or exported events first fails, and how."""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger import LedgerEvent
from ledger._audit.chain import ChainBreak, Link, find_break
from ledger._domain.hashing import GENESIS_HASH, chain_hash

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SOME_HASH = "ab" * 32


def _history(length: int, *, first_version: int = 1) -> list[LedgerEvent]:
    """A chained history of one user, each event linked to the previous one."""
    events: list[LedgerEvent] = []
    prev = GENESIS_HASH if first_version == 1 else SOME_HASH
    for version in range(first_version, first_version + length):
        event = LedgerEvent(
            user_id="alice",
            kind="updated",
            context_id="c1",
            thread_id="t",
            run_id=None,
            occurred_at=T0 + timedelta(seconds=version),
            version=version,
            details={"metadata": {"step": version}},
            prev_hash=prev,
        )
        events.append(event)
        prev = _hash(event)
    return events


def _hash(event: LedgerEvent) -> str:
    return chain_hash(event.model_dump(mode="json"))


def _links(events: Sequence[LedgerEvent]) -> list[Link]:
    return [Link(event.version, _hash(event), event.prev_hash) for event in events]


def _altered(event: LedgerEvent) -> LedgerEvent:
    return event.model_copy(update={"details": {"metadata": {"step": "forged"}}})


def _find(links: Sequence[Link]) -> ChainBreak | None:
    return find_break(links, first_prev=GENESIS_HASH)


# Chains that hold.


def test_an_intact_chain_has_no_break() -> None:
    links = _links(_history(6))

    assert _find(links) is None


def test_an_empty_chain_has_no_break() -> None:
    assert _find([]) is None


def test_a_single_event_from_the_genesis_hash_has_no_break() -> None:
    assert _find(_links(_history(1))) is None


def test_a_deleted_last_event_goes_unnoticed_without_a_recorded_head() -> None:
    links = _links(_history(6))[:-1]

    assert _find(links) is None


def test_an_altered_last_event_goes_unnoticed_without_a_recorded_head() -> None:
    events = _history(6)

    links = _links([*events[:-1], _altered(events[-1])])

    assert _find(links) is None


# Missing versions.


def test_a_deleted_event_is_missing_at_its_version() -> None:
    events = _history(6)

    found = _find(_links([*events[:2], *events[3:]]))

    assert found == ChainBreak(
        version=3,
        fault="missing",
        detail="version 3 absent: version 4 follows version 2",
    )


def test_deleted_consecutive_events_are_missing_as_a_range() -> None:
    events = _history(8)

    found = _find(_links([*events[:2], *events[5:]]))

    assert found == ChainBreak(
        version=3,
        fault="missing",
        detail="versions 3 to 5 absent: version 6 follows version 2",
    )


def test_a_deleted_first_event_is_missing_at_version_one() -> None:
    links = _links(_history(4))[1:]

    found = _find(links)

    assert found == ChainBreak(
        version=1,
        fault="missing",
        detail="version 1 absent: version 2 follows nothing",
    )


def test_a_chain_that_starts_late_is_missing_its_first_versions() -> None:
    links = _links(_history(3, first_version=5))

    found = _find(links)

    assert found == ChainBreak(
        version=1,
        fault="missing",
        detail="versions 1 to 4 absent: version 5 follows nothing",
    )


# Reordered events.


def test_two_swapped_events_are_reordered_at_the_earlier_version() -> None:
    links = _links(_history(6))

    found = _find([*links[:2], links[3], links[2], *links[4:]])

    assert found == ChainBreak(
        version=3,
        fault="reordered",
        detail="version 3 is stored out of place, after version 2",
    )


def test_a_first_event_stored_second_is_reordered_at_version_one() -> None:
    links = _links(_history(4))

    found = _find([links[1], links[0], *links[2:]])

    assert found == ChainBreak(
        version=1, fault="reordered", detail="version 1 is not stored first"
    )


def test_swapped_contents_under_kept_versions_are_reordered() -> None:
    events = _history(6)
    third, fourth = events[2], events[3]
    swapped = [
        fourth.model_copy(update={"version": 3}),
        third.model_copy(update={"version": 4}),
    ]

    found = _find(_links([*events[:2], *swapped, *events[4:]]))

    assert found == ChainBreak(
        version=3,
        fault="reordered",
        detail="the event that follows version 2 is stored as version 4",
    )


def test_a_version_stored_again_after_a_later_one_is_reordered() -> None:
    links = _links(_history(4))

    found = _find([*links, links[1]])

    assert found == ChainBreak(
        version=2,
        fault="reordered",
        detail="version 2 is stored again after version 4",
    )


# Altered events.


def test_an_altered_event_is_reported_at_its_own_version() -> None:
    events = _history(6)

    found = _find(_links([*events[:2], _altered(events[2]), *events[3:]]))

    assert found == ChainBreak(
        version=3,
        fault="altered",
        detail="its hash differs from the prev_hash recorded by version 4",
    )


def test_an_altered_first_event_is_reported_at_version_one() -> None:
    events = _history(4)

    found = _find(_links([_altered(events[0]), *events[1:]]))

    assert found is not None
    assert (found.version, found.fault) == (1, "altered")


def test_an_altered_event_before_the_last_is_reported_with_the_doubt() -> None:
    events = _history(5)

    found = _find(_links([*events[:3], _altered(events[3]), events[4]]))

    assert found == ChainBreak(
        version=4,
        fault="altered",
        detail="its hash differs from the prev_hash recorded by version 5 "
        "(or the prev_hash of version 5 was altered)",
    )


def test_an_altered_prev_hash_of_the_last_event_is_reported_with_the_doubt() -> None:
    events = _history(5)
    last = events[-1].model_copy(update={"prev_hash": SOME_HASH})

    found = _find(_links([*events[:-1], last]))

    assert found == ChainBreak(
        version=4,
        fault="altered",
        detail="its hash differs from the prev_hash recorded by version 5 "
        "(or the prev_hash of version 5 was altered)",
    )


def test_an_altered_prev_hash_inside_the_chain_is_reported_at_its_event() -> None:
    events = _history(6)
    third = events[2].model_copy(update={"prev_hash": SOME_HASH})

    found = _find(_links([*events[:2], third, *events[3:]]))

    assert found == ChainBreak(
        version=3,
        fault="altered",
        detail="its prev_hash differs from the hash of version 2, and "
        "version 4 does not confirm it",
    )


def test_a_first_event_that_does_not_start_from_first_prev_is_altered() -> None:
    links = _links(_history(3, first_version=5))

    found = find_break(links, first_version=5, first_prev=GENESIS_HASH)

    assert found == ChainBreak(
        version=5,
        fault="altered",
        detail="its prev_hash is not the one the chain starts from",
    )


@pytest.mark.parametrize(
    ("problem", "detail"),
    [
        ("cannot decode the stored state", "cannot decode the stored state"),
        (None, "unreadable"),
    ],
)
def test_an_unreadable_event_is_altered_with_its_problem(
    problem: str | None, detail: str
) -> None:
    links = _links(_history(5))
    links[2] = Link(3, None, None, problem)

    found = _find(links)

    assert found == ChainBreak(version=3, fault="altered", detail=detail)


# Where the chain starts.


def test_without_first_prev_any_first_prev_hash_is_accepted() -> None:
    links = _links(_history(4, first_version=5))

    found = find_break(links, first_version=5, first_prev=None)

    assert found is None


def test_without_first_prev_a_break_after_the_first_event_is_still_found() -> None:
    events = _history(4, first_version=5)

    found = find_break(
        _links([*events[:2], *events[3:]]), first_version=5, first_prev=None
    )

    assert found == ChainBreak(
        version=7,
        fault="missing",
        detail="version 7 absent: version 8 follows version 6",
    )


def test_a_chain_from_a_later_first_version_is_missing_what_comes_before() -> None:
    links = _links(_history(4, first_version=5))

    found = find_break(links, first_version=3, first_prev=None)

    assert found == ChainBreak(
        version=3,
        fault="missing",
        detail="versions 3 to 4 absent: version 5 follows nothing",
    )


# Properties: any deletion or adjacent swap is found, and where.


@given(st.data())
def test_deleting_any_event_but_the_last_is_missing_at_its_version(
    data: st.DataObject,
) -> None:
    length = data.draw(st.integers(min_value=2, max_value=50), label="length")
    deleted = data.draw(st.integers(min_value=1, max_value=length - 1), label="del")
    links = _links(_history(length))

    found = _find([link for link in links if link.version != deleted])

    assert found is not None
    assert (found.fault, found.version) == ("missing", deleted)


@given(st.data())
def test_swapping_two_adjacent_stored_events_is_reordered_at_the_earlier(
    data: st.DataObject,
) -> None:
    length = data.draw(st.integers(min_value=2, max_value=50), label="length")
    first = data.draw(st.integers(min_value=0, max_value=length - 2), label="first")
    links = _links(_history(length))
    links[first], links[first + 1] = links[first + 1], links[first]

    found = _find(links)

    assert found is not None
    assert (found.fault, found.version) == ("reordered", first + 1)


@given(st.data())
def test_swapping_the_contents_of_two_adjacent_versions_is_reordered_at_the_earlier(
    data: st.DataObject,
) -> None:
    length = data.draw(st.integers(min_value=2, max_value=50), label="length")
    first = data.draw(st.integers(min_value=0, max_value=length - 2), label="first")
    events = _history(length)
    earlier, later = events[first], events[first + 1]
    events[first] = later.model_copy(update={"version": earlier.version})
    events[first + 1] = earlier.model_copy(update={"version": later.version})

    found = _find(_links(events))

    assert found is not None
    assert (found.fault, found.version) == ("reordered", earlier.version)


@given(st.data())
def test_altering_any_event_but_the_last_is_altered_at_its_version(
    data: st.DataObject,
) -> None:
    length = data.draw(st.integers(min_value=2, max_value=50), label="length")
    index = data.draw(st.integers(min_value=0, max_value=length - 2), label="index")
    events = _history(length)
    events[index] = _altered(events[index])

    found = _find(_links(events))

    assert found is not None
    assert (found.fault, found.version) == ("altered", index + 1)
