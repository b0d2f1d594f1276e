"""What a change feed hands out: a row of the log decoded as history reads it,
or ``Damaged`` for an event that does not decode; and the positions a feed may
start from."""

from collections.abc import Iterable
from uuid import UUID

from eventsourcing.persistence import Notification

from ledger._domain.models import LedgerEvent
from ledger._store.backends import LogRow, as_stream_id
from ledger._store.records import RecordReader
from ledger.errors import InvalidContextInput, LedgerConfigError, LedgerError


class Damaged:
    """An event of the log that does not decode, in a feed's queue: taking it
    raises LedgerCorrupted (once), and the feed goes on after it."""

    __slots__ = ("position", "problem", "stream")

    def __init__(self, position: int, stream: UUID | str, problem: str) -> None:
        self.position = position
        self.stream = stream
        self.problem = problem


Item = tuple[int, LedgerEvent] | Damaged


def decode(records: RecordReader, row: LogRow) -> Item:
    """The change a stored event makes (read as history reads it: the fast
    decoder, else the mapper), or what is wrong with it."""
    position, stream, version, topic, state = row
    try:
        event = records.read_row(stream, version, topic, state).to_ledger_event()
    except LedgerError:
        raise  # a key that does not open: ``decode_all`` tells whose fault it is
    except (ValueError, TypeError) as error:  # MapperDeserialisationError, a topic
        return Damaged(position, as_stream_id(stream), str(error))
    return position, event


def decode_all(records: RecordReader, rows: Iterable[LogRow]) -> dict[int, Item]:
    """The rows decoded by position (in order). A data key that does not open is
    that user's damage once the ledger's master key is known to be right; a
    master key that is wrong or missing (another process started wrapping keys
    since this one opened) is raised, for every feed (LedgerConfigError)."""
    decoded: dict[int, Item] = {}
    checked = False
    for row in rows:
        try:
            decoded[row[0]] = decode(records, row)
        except LedgerConfigError as error:
            if not checked:
                records.keys.check_master_key(create=False)
                checked = True
            decoded[row[0]] = Damaged(row[0], as_stream_id(row[1]), str(error))
    return decoded


def beyond(after: int, head: int) -> None:
    """Refuses a start position past the log's head: a position this ledger
    never gave (another database's, or a client's guess) would silently skip
    events until the log reached it."""
    if after > head:
        raise InvalidContextInput(
            "after",
            after,
            f"is beyond the log's last position ({head})",
            "resume from the position of the last event a feed of this ledger "
            "gave, or pass after=None to start at the head now",
        )


def log_row(notification: Notification) -> LogRow:
    """A notification of the library as the row the decoders take."""
    return (
        notification.id,
        notification.originator_id,
        notification.originator_version,
        notification.topic,
        notification.state,
    )
