"""memory://: one process, nothing outside it can change or keep it."""

from typing import Any
from uuid import UUID

from eventsourcing.persistence import ApplicationRecorder, Notification

from ledger._store.backends import Backend, LogRow, as_stream_id
from ledger._store.erasure_marks import ErasureMarks
from ledger._store.keys import KeyStore, MasterKey, MemoryKeyStore


class MemoryBackend(Backend):
    """memory://: one process, nothing outside it can change or keep it."""

    durable = False

    def exists(self) -> bool:
        return False

    def key_store(self, datastore: Any, master_key: MasterKey | None) -> KeyStore:
        return MemoryKeyStore(master_key)

    def erasure_marks(self, datastore: Any) -> ErasureMarks:
        return ErasureMarks()

    def delete_snapshots(self, snapshots: Any, stream: UUID) -> None:
        """Nothing outside the process keeps them; their sealed metadata cannot be
        opened once the key is destroyed."""

    def snapshot_streams(self, recorder: Any) -> list[UUID | str]:
        return []

    def stream_version_at(
        self, recorder: ApplicationRecorder, stream: UUID, position: int
    ) -> int:
        versions = [
            n.originator_version
            for n in self._stream(recorder, stream, 0, position, None)
        ]
        return max(versions, default=0)

    def stream_after(
        self,
        recorder: ApplicationRecorder,
        stream: UUID,
        version: int,
        up_to: int,
        limit: int,
    ) -> list[Notification]:
        return self._stream(recorder, stream, version, up_to, limit)

    def log_rows(
        self,
        recorder: ApplicationRecorder,
        after: int,
        limit: int,
        up_to: int | None = None,
    ) -> list[LogRow]:
        return [
            (n.id, n.originator_id, n.originator_version, n.topic, n.state)
            for n in recorder.select_notifications(
                start=after, limit=limit, stop=up_to, inclusive_of_start=False
            )
        ]

    def stream_rows(
        self, recorder: ApplicationRecorder, stream: UUID, version: int, limit: int
    ) -> list[tuple[int, str, bytes]]:
        return [
            (e.originator_version, e.topic, e.state)
            for e in recorder.select_events(stream, gt=version, limit=limit)
        ]

    @staticmethod
    def _stream(
        recorder: ApplicationRecorder,
        stream: UUID,
        version: int,
        up_to: int,
        limit: int | None,
    ) -> list[Notification]:
        found = [
            n
            for n in recorder.select_notifications(start=1, limit=up_to, stop=up_to)
            if as_stream_id(n.originator_id) == stream
            and n.originator_version > version
        ]
        return found[:limit] if limit is not None else found
