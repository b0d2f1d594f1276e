"""The report's time axis: a few ticks, at round instants, for any span."""

from datetime import UTC, datetime, timedelta
from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from ctxledger._cli.report_axis import MAX_TICKS, nice_step, ticks

DAY = 86400
firsts = st.datetimes(
    min_value=datetime(2000, 1, 1),  # noqa: DTZ001  (hypothesis wants naive bounds)
    max_value=datetime(2100, 1, 1),  # noqa: DTZ001
    timezones=st.just(UTC),
)
spans = st.floats(min_value=10, max_value=10 * 365 * DAY)


@given(firsts, spans)
def test_a_span_gets_two_to_nine_ticks_a_round_step_apart(
    first: datetime, seconds: float
) -> None:
    last = first + timedelta(seconds=seconds)
    step = nice_step(seconds)

    instants = ticks(first, last, step)

    assert 2 <= len(instants) <= MAX_TICKS + 1
    assert first <= instants[0]
    assert instants[-1] <= last
    assert all(b - a == timedelta(seconds=step) for a, b in pairwise(instants))


@given(firsts, spans)
def test_ticks_fall_on_round_instants(first: datetime, seconds: float) -> None:
    step = nice_step(seconds)

    instants = ticks(first, first + timedelta(seconds=seconds), step)

    for at in instants:
        midnight = at.replace(hour=0, minute=0, second=0, microsecond=0)
        if step <= DAY:
            assert (at - midnight).total_seconds() % step == 0
        else:
            # Steps of days and weeks start at midnight, weeks on a Monday.
            assert at == midnight
            assert step % (7 * DAY) != 0 or at.weekday() == 0


def test_a_seven_minute_span_is_cut_in_minutes() -> None:
    first = datetime(2026, 7, 1, 9, 0, 12, tzinfo=UTC)

    instants = ticks(first, first + timedelta(minutes=7), nice_step(7 * 60))

    assert [at.strftime("%H:%M:%S") for at in instants] == [
        f"09:0{minute}:00" for minute in range(1, 8)
    ]
