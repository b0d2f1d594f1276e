"""Reads the ledger's notification log in batches and decodes each event.

Events are read into records (``ledger.store.records``): straight from their
stored state, without building a pydantic model per event."""

from collections.abc import Iterator
from typing import cast
from uuid import UUID

from eventsourcing.persistence import ApplicationRecorder, Mapper

from ledger.errors import LedgerError
from ledger.store.backends import Backend, safe_head
from ledger.store.keys import KeyStore
from ledger.store.records import RecordReader, as_uuid
from ledger.store.serialization import PydanticMapper
from projections.errors import UndecodableEvent
from projections.view import Positioned


class LogReader:
    """The ledger's events in order, each with its position (notification id)."""

    def __init__(
        self,
        recorder: ApplicationRecorder,
        mapper: Mapper[UUID],
        keys: KeyStore,
        backend: Backend,
    ) -> None:
        self.recorder = recorder
        self.backend = backend
        self.keys = keys
        self.records = RecordReader(cast(PydanticMapper, mapper), keys)

    def head(self) -> int:
        """The log's safe head (``safe_head``): no event can still appear at or
        before it, so reading up to it skips nothing; 0 for an empty ledger."""
        return safe_head(self.recorder)

    def batch(
        self, after: int, limit: int, up_to: int | None = None
    ) -> list[Positioned]:
        """Up to ``limit`` events after position ``after`` (and at most ``up_to``).

        It ends before an event that cannot be decoded, so the events before it
        are applied; the next batch starts with it and raises UndecodableEvent.
        """
        rows = self.backend.log_rows(self.recorder, after, limit, up_to)
        decoded: list[Positioned] = []
        streams = {stream: as_uuid(stream) for stream in {row[1] for row in rows}}
        with self.keys.reading():  # the batch's users' keys, in a few statements
            self.keys.prefetch_streams(streams.values())
            for position, stream, version, topic, state in rows:
                try:
                    decoded.append(
                        self.decode(position, streams[stream], version, topic, state)
                    )
                except UndecodableEvent:
                    if not decoded:
                        raise
                    break
        return decoded

    def events(self, after: int, up_to: int, limit: int) -> Iterator[Positioned]:
        """Every event after ``after`` up to ``up_to``, read ``limit`` at a time."""
        while after < up_to:
            batch = self.batch(after, limit, up_to)
            if not batch:
                return
            yield from batch
            after = batch[-1][0]

    def decode(
        self, position: int, stream: UUID, version: int, topic: str, state: bytes
    ) -> Positioned:
        try:
            return position, self.records.read_row(stream, version, topic, state)
        except LedgerError:
            raise  # a master key that does not open the keys: a setting to fix
        except Exception as error:
            raise UndecodableEvent(position, str(error)) from error
