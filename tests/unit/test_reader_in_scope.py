"""A reader made for one ``keys.reading()`` scope (``RecordReader.in_scope``, what
a verification pass reads with) keeps the keys the scope gave it: it must read
and refuse exactly as the shared reader, on every read, not only the first."""

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from tests.unit.test_codec_reader import (
    EVENTS,
    READER,
    STORED,
    _altered,
    _outcome,
    changes,
)


def test_a_scoped_reader_reads_each_event_as_the_shared_reader() -> None:
    with READER.keys.reading():
        scoped = READER.in_scope()
        for _ in range(2):
            for stored in STORED:
                assert _outcome(lambda s=stored: scoped.read(s)) == _outcome(
                    lambda s=stored: READER.read(s)
                )


@given(st.integers(0, len(EVENTS) - 1), changes)
def test_an_altered_event_reads_alike_through_a_scoped_reader_every_time(
    index: int, change: dict[str, Any]
) -> None:
    stored = _altered(index, change)
    with READER.keys.reading():
        scoped = READER.in_scope()
        first = _outcome(lambda: scoped.read(stored))
        again = _outcome(lambda: scoped.read(stored))

        assert first == again == _outcome(lambda: READER.read(stored))
