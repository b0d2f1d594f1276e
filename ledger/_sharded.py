"""``ShardedLedger``: ``ContextLedger`` over several PostgreSQL databases.

``ContextLedger.open(url)`` returns one when the database at ``url`` holds a shard
directory (``ledger._store.shard_directory``); the API is the same. Each shard is a
whole ledger of its own (events, keys, snapshots, erasure marks), opened on first
use, so a shard that is down fails only its users' calls. A user's calls go to the
shard the directory gives it; commands assign a new user first. A command that
the source shard's guard refuses (the user moved, or is moving) looks the user up
again and runs on its new shard: the refused append was rolled back, so the retry
applies the command once.

Calls across users (``expire_due``, retention, ``verify_chain``) run on every
shard; a shard that fails does not stop the others, and its failure is raised
after them with a note of what the others did.
"""

import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote
from uuid import UUID

from ledger import _metrics as metrics
from ledger import _tracing as tracing
from ledger._api import ContextLedger
from ledger._audit.chain import ChainReport
from ledger._audit.export import ExportManifest
from ledger._domain import validation
from ledger._domain.contexts import user_aggregate_id
from ledger._domain.models import Context, LedgerEvent
from ledger._shard_moves import finish_departures, recover_move
from ledger._sharded_checkpoints import ShardedCheckpoints
from ledger._sharded_feed import ShardedChangeFeed, sharded_changes
from ledger._store.postgres_log import CONNECT_TIMEOUT_SETTING
from ledger._store.shard_directory import (
    Connections,
    Shard,
    ShardDirectory,
    directory_table,
)
from ledger._store.shard_guard import MOVED_IN_TABLE, refusal_of
from ledger._store.urls import Storage, storage_for
from ledger.errors import LedgerConfigError, LedgerError, StorageUnavailable

T = TypeVar("T")
MOVE_WAIT_SECONDS = 30.0
"""How long a command waits for a move of its user to finish before giving up."""
_ROUTE_ATTEMPTS = 5


class ShardedLedger(ShardedCheckpoints):
    """The ledger of a deployment whose users are spread over several databases."""

    def __init__(
        self,
        directory: ShardDirectory,
        opener: Callable[[str], ContextLedger],
        shard_zero: ContextLedger,
    ) -> None:
        # No ContextLedger.__init__: each shard's ledger holds its own state.
        self.directory = directory
        self.storage = shard_zero.storage
        self._opener = opener
        self._ledgers: dict[int, ContextLedger] = {0: shard_zero}
        metrics.label_shard(shard_zero, 0)
        shard_zero._app.shard_id = 0
        self._connections: dict[int, Connections] = {}
        self._urls: dict[int, str] = {}
        self._lock = threading.Lock()
        self._app = shard_zero._app
        self._clock = shard_zero._clock
        self.max_contexts_per_user = shard_zero.max_contexts_per_user
        self.on_limit = shard_zero.on_limit
        self.default_ttl_seconds = shard_zero.default_ttl_seconds
        self._refresh_shards()

    # Shards.

    def shards(self) -> list[Shard]:
        """The directory's shards, with their users (a query each call)."""
        return self.directory.shards()

    def shard_of(self, user_id: str) -> int | None:
        """The shard that holds ``user_id``'s stream; None if it has none yet."""
        user = validation.identifier("user_id", user_id)
        found = self.directory.lookup(user_aggregate_id(user))
        return None if found is None else found.shard_id

    def shard(self, shard_id: int) -> ContextLedger:
        """The ledger of one shard (opened on first use)."""
        with self._lock:
            opened = self._ledgers.get(shard_id)
        if opened is not None:
            return opened
        url = self._urls.get(shard_id)
        if url is None:
            self._refresh_shards()
            url = self._urls.get(shard_id)
        if url is None:
            raise StorageUnavailable(
                f"shard {shard_id}",
                LookupError(f"the shard directory lists no shard {shard_id}"),
            )
        ledger = self._opener(url)
        ledger.log_shard = shard_id
        ledger._app.shard_id = shard_id
        metrics.label_shard(ledger, shard_id)
        with self._lock:
            if shard_id in self._ledgers:  # another thread opened it meanwhile
                ledger.close()
                return self._ledgers[shard_id]
            self._ledgers[shard_id] = ledger
        return ledger

    def connections(self, shard_id: int) -> Connections:
        """Connections of the ledger's own to a shard's database (for moves)."""
        storage = self.shard(shard_id).storage
        with self._lock:
            return self._connections.setdefault(shard_id, Connections(storage))

    def shard_ids(self) -> list[int]:
        self._refresh_shards()
        return sorted(self._urls)

    def _refresh_shards(self) -> None:
        shards = self.directory.shards()
        with self._lock:
            self._urls = {
                shard.shard_id: connect_url(shard.url, self.storage)
                for shard in shards
                if shard.shard_id != 0
            }
            self._urls[0] = ""

    # Routing.

    def _routed(
        self, user_id: str, call: Callable[[ContextLedger], T], *, write: bool
    ) -> T:
        user = validation.identifier("user_id", user_id)
        stream = user_aggregate_id(user)
        for _ in range(_ROUTE_ATTEMPTS):
            shard_id = self._route(stream, write=write)
            tracing.routed_to(shard_id)
            ledger = self.shard(shard_id)
            try:
                return call(ledger)
            except LedgerError as error:
                if refusal_of(error) is None:
                    raise
                self.directory.forget_cached(stream)
                self._settled(stream)
        raise StorageUnavailable(
            "the shard directory",
            RuntimeError(
                f"user {user!r} kept changing shards during {_ROUTE_ATTEMPTS} "
                "attempts; try again"
            ),
            writing=write,
        )

    def _route(self, stream: UUID, *, write: bool) -> int:
        found = (
            self.directory.assign(stream) if write else self.directory.lookup(stream)
        )
        if found is None:
            return 0  # a user with no events yet: any shard answers "nothing"
        if found.moving_to is not None and write:
            return self._settled(stream)
        return found.shard_id

    def _settled(self, stream: UUID) -> int:
        """The stream's shard once no move of it is under way (a move whose mover
        died is finished or undone first)."""
        deadline = time.monotonic() + MOVE_WAIT_SECONDS
        pause = 0.01
        while True:
            found = self.directory.lookup(stream, fresh=True)
            if found is None or found.moving_to is None:
                return 0 if found is None else found.shard_id
            if recover_move(self, stream):
                continue
            if time.monotonic() > deadline:
                raise StorageUnavailable(
                    f"shard {found.shard_id}",
                    TimeoutError(
                        f"stream {stream} has been moving to shard "
                        f"{found.moving_to} for over {MOVE_WAIT_SECONDS:.0f} s; "
                        "wait for the move (ctxledger shards list) and try again"
                    ),
                    writing=True,
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.2)

    # Commands and queries of one user: on the user's shard.

    @tracing.traced("open_context")
    def open_context(self, user_id: str, thread_id: str, **options: Any) -> Context:
        return self._routed(
            user_id,
            lambda shard: shard.open_context(user_id, thread_id, **options),
            write=True,
        )

    @tracing.traced("update_context")
    def update_context(self, user_id: str, context_id: str, **options: Any) -> Context:
        return self._routed(
            user_id,
            lambda shard: shard.update_context(user_id, context_id, **options),
            write=True,
        )

    @tracing.traced("clear_context")
    def clear_context(self, user_id: str, context_id: str, **options: Any) -> None:
        self._routed(
            user_id,
            lambda shard: shard.clear_context(user_id, context_id, **options),
            write=True,
        )

    @tracing.traced("clear_user")
    def clear_user(self, user_id: str, **options: Any) -> int:
        return self._routed(
            user_id, lambda shard: shard.clear_user(user_id, **options), write=True
        )

    @tracing.traced("forget_user")
    def forget_user(self, user_id: str, **options: Any) -> int:
        erased = self._routed(
            user_id, lambda shard: shard.forget_user(user_id, **options), write=True
        )
        # A copy that a move cut short left on its source holds the user's keys.
        finish_departures(self, user_aggregate_id(user_id))
        return erased

    @tracing.traced("get_context")
    def get_context(self, user_id: str, thread_id: str) -> Context | None:
        return self._routed(
            user_id, lambda shard: shard.get_context(user_id, thread_id), write=False
        )

    @tracing.traced("active_contexts")
    def active_contexts(self, user_id: str) -> list[Context]:
        return self._routed(
            user_id, lambda shard: shard.active_contexts(user_id), write=False
        )

    @tracing.traced("history")
    def history(self, user_id: str, **options: Any) -> list[LedgerEvent]:
        return self._routed(
            user_id, lambda shard: shard.history(user_id, **options), write=False
        )

    @tracing.traced("contexts_as_of")
    def contexts_as_of(self, user_id: str, as_of: datetime) -> list[Context]:
        return self._routed(
            user_id, lambda shard: shard.contexts_as_of(user_id, as_of), write=False
        )

    @tracing.traced("context_history")
    def context_history(self, user_id: str, context_id: str) -> list[LedgerEvent]:
        return self._routed(
            user_id,
            lambda shard: shard.context_history(user_id, context_id),
            write=False,
        )

    @tracing.traced("export")
    def export(self, user_id: str, path: str | Path, **options: Any) -> ExportManifest:
        return self._routed(
            user_id, lambda shard: shard.export(user_id, path, **options), write=False
        )

    # Calls across users: on every shard.

    @tracing.traced("expire_due")
    def expire_due(self) -> int:
        self._settle_moves()
        return sum(self._on_every_shard("expire_due", lambda s: s.expire_due()))

    @tracing.traced("forget_inactive")
    def forget_inactive(
        self, inactive_since: datetime, *, reason: str | None = None
    ) -> dict[str, int]:
        self._settle_moves()
        forgotten: dict[str, int] = {}
        for part in self._on_every_shard(
            "forget_inactive",
            lambda s: s.forget_inactive(inactive_since, reason=reason),
        ):
            forgotten.update(part)
        return forgotten

    @tracing.traced("inactive_users")
    def inactive_users(self, inactive_since: datetime) -> list[str]:
        self._settle_moves()  # a copy a cut-short move left is not a user there
        users: set[str] = set()  # a copy a cut-short move left is listed once
        for part in self._on_every_shard(
            "inactive_users", lambda s: s.inactive_users(inactive_since)
        ):
            users.update(part)
        return sorted(users)

    @tracing.traced("verify_chain")
    def verify_chain(
        self,
        user_id: str | None = None,
        *,
        on_page: Callable[[int], None] | None = None,
    ) -> ChainReport:
        if user_id is not None:
            return self._routed(
                user_id, lambda shard: shard.verify_chain(user_id), write=False
            )
        reports = self._on_every_shard(
            "verify_chain", lambda s: s.verify_chain(on_page=on_page)
        )
        users = [chain for report in reports for chain in report.users]
        return ChainReport(users=tuple(sorted(users, key=lambda c: c.user_id)))

    @tracing.traced("chain_size")
    def chain_size(self) -> int:
        return sum(self._on_every_shard("chain_size", lambda s: s.chain_size()))

    # The change feed: each shard's log through that shard's own reader.

    def changes(  # type: ignore[override]  # a position per shard: text, not int
        self, user_id: str | None = None, *, after: int | str | None = None
    ) -> ShardedChangeFeed:
        """Every event stored after ``after`` on any shard, each shard's in log
        order, each once (also across a move), as ``(position, event)``: the
        position is text with a position per shard (``0:120.1:57.2:9``), which
        ``after`` takes back; an int (or its digits) is shard 0's. A shard out of
        reach holds back only its own events (``ledger._sharded_feed``)."""
        return sharded_changes(self, user_id, after)

    def _settle_moves(self) -> None:
        """Before a sweep over every shard: moves whose mover died are ended and
        the copies they left are deleted, so each user is swept on one shard (a
        user a live mover is moving is swept by the next run)."""
        for stream in self.directory.moving():
            recover_move(self, stream)
        finish_departures(self)

    def _on_every_shard(self, name: str, call: Callable[[ContextLedger], T]) -> list[T]:
        """``call`` on each shard in turn; a shard that fails does not stop the
        others, and the first failure is raised after them with a note."""
        results: list[T] = []
        failures: list[tuple[int, BaseException]] = []
        for shard_id in self.shard_ids():
            try:
                results.append(call(self.shard(shard_id)))
            except LedgerError as error:
                failures.append((shard_id, error))
        if failures:
            shard_id, first = failures[0]
            first.add_note(
                f"{name} ran on {len(results)} other shard(s); shard(s) "
                f"{', '.join(str(s) for s, _ in failures)} failed: run it again "
                "when they are back"
            )
            raise first
        return results

    def close(self) -> None:
        if self.calls.closed:
            return
        self.calls.close()
        with self._lock:
            ledgers, self._ledgers = list(self._ledgers.values()), {}
        for ledger in ledgers:
            ledger.close()
        for connections in self._connections.values():
            connections.close()
        self.directory.close()


_POOL_OPTIONS = {
    "pool_size": "POSTGRES_POOL_SIZE",
    "max_overflow": "POSTGRES_MAX_OVERFLOW",
    "pool_timeout": "POSTGRES_CONNECT_TIMEOUT",
    "connect_timeout": CONNECT_TIMEOUT_SETTING,
}


def connect_url(stored: str, caller: Storage) -> str:
    """A shard's URL to connect with: the pool options of the caller's URL, and
    the caller's password when the shard has the same user, host and port (else
    PGPASSWORD or a pgpass file supplies one)."""
    shard = storage_for(stored).settings
    mine = caller.settings
    pool = "".join(f"&{option}={mine[key]}" for option, key in _POOL_OPTIONS.items())
    same = all(
        shard[key] == mine[key]
        for key in ("POSTGRES_USER", "POSTGRES_HOST", "POSTGRES_PORT")
    )
    password = mine["POSTGRES_PASSWORD"]
    if not same or not password:
        return stored + pool
    user = quote(shard["POSTGRES_USER"], safe="")
    prefix = f"postgresql://{user}@"
    with_password = f"postgresql://{user}:{quote(password, safe='')}@"
    return stored.replace(prefix, with_password, 1) + pool


def sharded_if_directory(
    shard_zero: ContextLedger, url: str, opener: Callable[[str], ContextLedger]
) -> ContextLedger:
    """``shard_zero`` itself when its database holds no shard directory (one query
    at opening, on the ledger's own pool; nothing per call); else the sharded
    ledger over it."""
    try:
        recorder: Any = shard_zero._app.recorder  # a PostgreSQL recorder here
        with recorder.datastore.transaction() as cursor:
            schema = shard_zero.storage.settings["POSTGRES_SCHEMA"]
            cursor.execute(
                "SELECT to_regclass(%s) IS NOT NULL AS found, "
                "to_regclass(%s) IS NOT NULL AS guarded",
                (directory_table(shard_zero.storage), f'"{schema}"."{MOVED_IN_TABLE}"'),
            )
            row = cursor.fetchone()
        if row and row["guarded"] and not row["found"]:
            _not_a_ledger(shard_zero.storage)
        if not (row and row["found"]):
            return shard_zero
        return ShardedLedger(
            ShardDirectory(shard_zero.storage, url), opener, shard_zero
        )
    except BaseException:
        shard_zero.close()
        raise


def _not_a_ledger(storage: Storage) -> NoReturn:
    raise LedgerConfigError(
        f"{storage.description} is a shard of a sharded ledger, not a ledger of "
        "its own: open the ledger's URL (the database that holds the shard "
        "directory) and it routes each user here"
    )
