"""The report's time axis: a few ticks at round instants, for any span."""

from datetime import UTC, datetime, timedelta
from math import ceil

NICE_STEPS = (  # seconds: 1 s to 30 s, 1 min to 30 min, 1 h to 12 h, 1 day to 2 weeks
    *(1, 2, 5, 10, 15, 30),
    *(60, 120, 300, 600, 900, 1800),
    *(3600, 7200, 10800, 21600, 43200),
    *(86400, 172800, 604800, 1209600),
)
MAX_TICKS = 8
ORIGIN = datetime(1970, 1, 5, tzinfo=UTC)  # a Monday, 00:00: steps count from it


def nice_step(seconds: float) -> int:
    """The smallest round step, in seconds, that cuts ``seconds`` in few ticks."""
    for step in NICE_STEPS:
        if seconds / step <= MAX_TICKS:
            return step
    weeks = NICE_STEPS[-1]
    return weeks * ceil(seconds / (MAX_TICKS * weeks))


def ticks(first: datetime, last: datetime, step: int) -> list[datetime]:
    """The round instants, multiples of ``step`` since ORIGIN, from first to last."""
    index = ceil((first - ORIGIN).total_seconds() / step)
    found = []
    while (at := ORIGIN + timedelta(seconds=index * step)) <= last:
        found.append(at)
        index += 1
    return found
