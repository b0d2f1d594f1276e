"""The ledger's log as read models read it: the one door for ``projections``.

A read model needs little of the ledger: where it is and whether it lasts, the
log's safe head, batches of decoded events after a position, the users' data keys
to seal and open its cells, and the database the ledger lives in, to keep its
tables and tracking positions beside the events. This module gives exactly that,
over the store's pieces, so nothing outside ``ledger`` reaches into ``ledger._store``.
It reads; it never writes an event.

On a sharded ledger it also gives what views need to read every shard: the
shards' URLs (``LogSource.shard_urls``), and for each shard's log the copies a
move made and the streams that moved away, judged by the one rule of
``ledger._store.shard_copies`` (``taken_elsewhere``).
"""

from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from uuid import UUID

from eventsourcing.persistence import TrackingRecorder

from ledger._audit.log_tree import LogTree
from ledger._domain.contexts import user_aggregate_id
from ledger._feed_positions import sharded_position
from ledger._sharded import connect_url
from ledger._store.application import LedgerApplication, open_application
from ledger._store.backends import Dialect, backend_for, safe_head
from ledger._store.failures import StorageClient, storage_failures
from ledger._store.keys import KeyStore, place_of, resolve_master_key, seal, unseal
from ledger._store.records import EventRecord, RecordReader, as_uuid, unpack_state
from ledger._store.serialization import _EVENT, PydanticMapper
from ledger._store.shard_copies import (
    MovesAround,
    copy_position,
    moves_around,
    taken_elsewhere,
)
from ledger._store.shard_directory import ShardDirectory, directory_table
from ledger._store.urls import POSTGRES_POOL, Storage, resolve_url, storage_for
from ledger.errors import LedgerError

__all__ = [
    "Batch",
    "Dialect",
    "EventRecord",
    "LogSource",
    "MovesAround",
    "Positioned",
    "SourceKeys",
    "Storage",
    "StorageClient",
    "Where",
    "locate",
    "sharded_position",
    "storage_failures",
    "taken_elsewhere",
]

Positioned = tuple[int, EventRecord]
"""An event with its position: its notification id in the log."""
_VIEW = b"ctxledger view"
PLACES_KEPT = 50_000


@dataclass(frozen=True)
class Where:
    """A ledger's location: its URL (resolved) and whether its storage lasts."""

    url: str
    storage: Storage

    @property
    def durable(self) -> bool:
        return backend_for(self.storage).durable


def locate(url: str | None) -> Where:
    """Where the ledger at ``url`` (else CTXLEDGER_URL, else the default) is."""
    resolved = resolve_url(url)
    return Where(resolved, storage_for(resolved))


def with_pool_options(shard_url: str, url: str) -> str:
    """A shard's URL with the pool options of the ledger's (``pool_size`` and the
    others): one process sizes its pools alike on every shard."""
    given = parse_qsl(urlsplit(url).query)
    options = [(name, value) for name, value in given if name in POSTGRES_POOL]
    if not options:
        return shard_url
    parts = urlsplit(shard_url)
    query = [(n, v) for n, v in parse_qsl(parts.query) if n not in POSTGRES_POOL]
    return urlunsplit(parts._replace(query=urlencode([*query, *options])))


@dataclass(frozen=True)
class Batch:
    """Decoded events in log order; ``undecodable`` is the position, reason and
    error of the event the batch stopped before (None: it stopped at its limit)."""

    events: list[Positioned]
    undecodable: tuple[int, str, Exception] | None = None


class SourceKeys:
    """The users' data keys, as read models use them: looked up for a batch at
    once, sealing a view's own cells and opening them or an event's sealed value."""

    def __init__(self, keys: KeyStore) -> None:
        self._keys = keys
        self._places: dict[tuple[str, bytes, int], tuple[UUID, bytes]] = {}

    def reading(self, cursor: Any = None) -> AbstractContextManager[None]:
        """A scope in which each key is looked up once (on ``cursor``, a
        transaction of the ledger's database, if given)."""
        return self._keys.reading(cursor=cursor)

    def prefetch(self, wanted: Iterable[tuple[str, int]]) -> None:
        """Looks up the keys of many (user id, generation) at once."""
        self._keys.prefetch(self._stream(user, gen) for user, gen in wanted)

    def seal_cell(self, user_id: str, generation: int, plain: bytes) -> bytes | None:
        """``plain`` sealed for a view under the user's key of ``generation``;
        None once that key is destroyed."""
        stream, place = self._place(user_id, _VIEW, generation)
        cipher = self._keys.for_reading(stream, generation)
        return None if cipher is None else seal(cipher, place, plain)

    def open_cell(self, user_id: str, generation: int, sealed: bytes) -> bytes | None:
        """What ``seal_cell`` sealed; None once the key is destroyed. ValueError
        if it does not open (altered, or moved to another user's row)."""
        return self._open(user_id, _VIEW, generation, sealed)

    def open_event_value(
        self, user_id: str, generation: int, sealed: bytes
    ) -> tuple[Any, Any] | None:
        """An event's sealed value as stored: its ``(metadata, salt)``; None once
        the key is destroyed. ValueError if it does not open or is not a pair."""
        plain = self._open(user_id, _EVENT, generation, sealed)
        if plain is None:
            return None
        value = unpack_state(plain)
        if not isinstance(value, list) or len(value) != 2:  # noqa: PLR2004
            msg = "an event's sealed value is not [metadata, salt]"
            raise ValueError(msg)
        return value[0], value[1]

    def _open(
        self, user_id: str, kind: bytes, generation: int, sealed: bytes
    ) -> bytes | None:
        stream, place = self._place(user_id, kind, generation)
        cipher = self._keys.for_reading(stream, generation)
        return None if cipher is None else unseal(cipher, place, sealed)

    def _stream(self, user_id: str, generation: int) -> tuple[UUID, int]:
        return self._place(user_id, _VIEW, generation)[0], generation

    def _place(self, user_id: str, kind: bytes, generation: int) -> tuple[UUID, bytes]:
        """The user's stream and the associated data of ``kind`` (worked out once
        per user and generation: a UUID's bytes are computed on every access)."""
        known = self._places.get((user_id, kind, generation))
        if known is None:
            if len(self._places) >= PLACES_KEPT:
                self._places.clear()
            stream = user_aggregate_id(user_id)
            known = stream, place_of(kind, stream, 0, generation)
            self._places[user_id, kind, generation] = known
        return known


class LogSource:
    """One ledger's log, keys and database, opened for a read model."""

    def __init__(self, application: LedgerApplication) -> None:
        self._app = application
        self.storage = application.storage
        self.keys = SourceKeys(application.keys)
        self._records = RecordReader(
            cast(PydanticMapper, application.mapper), application.keys
        )
        self._tree: LogTree | None = None

    @classmethod
    def open(
        cls,
        where: Where,
        *,
        create: bool = True,
        master_key: bytes | str | None = None,
    ) -> "LogSource":
        """The ledger at ``where``, its tables created if need be (``create``);
        LedgerNotFound without ``create`` where there is none. ``master_key`` (else
        CTXLEDGER_MASTER_KEY) opens the data keys."""
        return cls(
            open_application(
                where.storage,
                create=create,
                master_key=resolve_master_key(master_key),
            )
        )

    def close(self) -> None:
        self._app.close()

    def head(self) -> int:
        """The log's safe head: no event can still appear at or before it, so
        reading up to it skips nothing; 0 for an empty ledger."""
        return safe_head(self._app.log_reader)

    def extend_tree(self, up_to: int) -> int:
        """Takes the log's events up to ``up_to`` (a safe head) into the log's
        Merkle tree, which signed checkpoints sign; the tree's size after. A
        memory:// ledger keeps no tree (0)."""
        if self.storage.kind == "memory":
            return 0
        if self._tree is None:
            self._tree = LogTree(self._app)
        return self._tree.extend(up_to)

    @property
    def reads_apart(self) -> bool:
        """Whether the log is read on connections of its own (PostgreSQL's
        readers' pool), so a read overlaps a write instead of waiting for it."""
        return self._app.log_reader is not self._app.recorder

    # Shards.

    def shard_urls(self, url: str) -> dict[int, str] | None:
        """Each shard's URL to connect with, by shard id, when this ledger's
        PostgreSQL database (at ``url``) holds a shard directory (shard 0 is
        ``url`` itself); None for any other ledger. One query on the ledger's own
        pool for a ledger without shards, none on SQLite."""
        if self.storage.kind != "postgres":
            return None
        with self._app.recorder.datastore.transaction(commit=False) as cursor:  # type: ignore[attr-defined]
            cursor.execute(
                "SELECT to_regclass(%s) IS NOT NULL AS found",
                (directory_table(self.storage),),
            )
            row = cursor.fetchone()
        if not (row and row["found"]):
            return None
        directory = ShardDirectory(self.storage, url)
        try:
            shards = directory.shards()
        finally:
            directory.close()
        return {
            s.shard_id: url
            if s.shard_id == 0
            else with_pool_options(connect_url(s.url, self.storage), url)
            for s in shards
        }

    # A shard's log: the copies a move made, and the streams that moved away.

    def moves(self, first: int, last: int) -> MovesAround:
        """The copies among positions ``first``..``last`` of this log and the
        streams that moved to other shards (``ledger._store.shard_copies``)."""
        with self._reading_cursor() as cursor:
            return moves_around(cursor, self._schema, first, last)

    def copy_position(self, stream: UUID, version: int) -> int | None:
        """The position of the copy of ``stream``'s event ``version`` that a move
        made in this log; None if there is none."""
        with self._reading_cursor() as cursor:
            return copy_position(cursor, self._schema, stream, version)

    @contextmanager
    def _reading_cursor(self) -> Iterator[Any]:
        datastore = self._app.log_reader.datastore  # type: ignore[attr-defined]
        with datastore.transaction(commit=False) as cursor:
            yield cursor

    @property
    def _schema(self) -> str:
        return str(self.storage.settings["POSTGRES_SCHEMA"])

    def count_after(self, position: int) -> int:
        """How many events are stored after ``position`` (positions skip numbers)."""
        return self._app.backend.count_after(self._app.recorder, position)

    def batch(self, after: int, limit: int, up_to: int | None = None) -> Batch:
        """Up to ``limit`` events after position ``after`` (at most ``up_to``),
        decoded by the ledger's one decoder; it stops before an event that cannot
        be decoded and says which (``Batch.undecodable``)."""
        app = self._app
        rows = app.backend.log_rows(app.log_reader, after, limit, up_to)
        streams = {stream: as_uuid(stream) for stream in {row[1] for row in rows}}
        decoded: list[Positioned] = []
        with app.keys.reading():  # the batch's users' keys, in a few statements
            app.keys.prefetch_streams(streams.values())
            for position, stream, version, topic, state in rows:
                try:
                    record = self._records.read_row(
                        streams[stream], version, topic, state
                    )
                except LedgerError:
                    raise  # a master key that does not open the keys: a setting
                except Exception as error:  # noqa: BLE001  (reported, not skipped)
                    return Batch(decoded, (position, str(error), error))
                decoded.append((position, record))
        return Batch(decoded)

    # The ledger's database, for tables kept beside its events.

    @property
    def dialect(self) -> Dialect:
        return self._app.backend.dialect()

    @property
    def tracking_table(self) -> str:
        """The unquoted name of the read models' tracking table."""
        return self._app.backend.tracking_table

    def tracking(self, *, create: bool) -> tuple[TrackingRecorder, str]:
        """A tracking recorder on the ledger's database (and connection pool), and
        its table's quoted name; the table is created if ``create``."""
        datastore = self._app.recorder.datastore  # type: ignore[attr-defined]
        recorder, table = self._app.backend.tracking(datastore)
        if create:
            recorder.create_table()  # type: ignore[attr-defined]
        return recorder, table

    @contextmanager
    def setup_lock(self) -> Iterator[None]:
        """Held while tables are created, so processes starting together agree."""
        with self._app.backend.setup_lock():
            yield

    def check_connections(self) -> None:
        """After a failure of the database: replaces the pooled connections the
        server closed."""
        self._app.check_connections()
