"""Reads the ledger's log in batches of decoded events (``ledger.log_source``)."""

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from ledger.log_source import LogSource, Positioned
from projections._errors import UndecodableEvent


class LogReader:
    """The ledger's events in order, each with its position (notification id)."""

    def __init__(self, source: LogSource) -> None:
        self.source = source

    def head(self) -> int:
        """The log's safe head (``LogSource.head``); 0 for an empty ledger."""
        return self.source.head()

    def batch(
        self, after: int, limit: int, up_to: int | None = None
    ) -> list[Positioned]:
        """Up to ``limit`` events after position ``after`` (and at most ``up_to``).

        It ends before an event that cannot be decoded, so the events before it
        are applied; the next batch starts with it and raises UndecodableEvent.
        """
        batch = self.source.batch(after, limit, up_to)
        if batch.undecodable is not None and not batch.events:
            position, reason, error = batch.undecodable
            raise UndecodableEvent(position, reason) from error
        return batch.events

    def events(self, after: int, up_to: int, limit: int) -> Iterator[Positioned]:
        """Every event after ``after`` up to ``up_to``, read ``limit`` at a time."""
        while after < up_to:
            batch = self.batch(after, limit, up_to)
            if not batch:
                return
            yield from batch
            after = batch[-1][0]


class ReadAhead:
    """Reads the next batch in a thread while the views write the last one.

    A batch read ahead is the one ``LogReader.batch`` would give for the same
    arguments (the same decoder over the same rows, which cannot change below the
    safe head); it is used only if the next request asks for exactly it, else it
    is dropped and the batch is read anew. So it changes when a batch is read,
    never what it holds. The thread's database waits (and the views' writes)
    overlap with decoding.
    """

    def __init__(self, reader: LogReader) -> None:
        self.reader = reader
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="ctxledger-views-read")
        self._ahead: tuple[tuple[int, int, int], Future[list[Positioned]]] | None = None

    def batch(self, after: int, limit: int, up_to: int) -> list[Positioned]:
        """``LogReader.batch``; then starts reading the batch that follows."""
        wanted = (after, limit, up_to)
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == wanted:
            batch = ahead[1].result()
        else:
            _drop(ahead)
            batch = self.reader.batch(after, limit, up_to)
        if batch and batch[-1][0] < up_to:
            after = batch[-1][0]
            future = self._pool.submit(self.reader.batch, after, limit, up_to)
            self._ahead = ((after, limit, up_to), future)
        return batch

    def close(self) -> None:
        """Waits for a read under way (it holds a connection of the pool)."""
        ahead, self._ahead = self._ahead, None
        _drop(ahead)
        self._pool.shutdown(wait=True)

    def __enter__(self) -> "ReadAhead":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _drop(ahead: tuple[object, Future[list[Positioned]]] | None) -> None:
    """Forgets a batch read ahead (and any error of reading it): nobody asked
    for it."""
    if ahead is not None and not ahead[1].cancel():
        ahead[1].exception()  # waits for it to end
