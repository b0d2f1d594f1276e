"""``AsyncContextLedger``: the domain API for asyncio servers.

Each call runs the synchronous ledger's method in a thread of the ledger's own
bounded pool, so the event loop never waits on the database or the hash chain:

- At most ``max_threads`` calls run at once (default DEFAULT_MAX_THREADS); the
  others wait on the loop, so a burst of 10,000 calls starts no more threads.
- Calls for one user run one at a time in the order they were made (a fair
  asyncio lock per user, held until the call's thread is done).
- A cancelled call either ran to the end in its thread (it took effect
  completely) or had not started (it appended nothing): a command is one
  transaction, and a thread is never interrupted. The user's turn is held until
  the thread ends, so the next call of that user sees its outcome.

Why threads rather than native async drivers: the library (``eventsourcing``
9.5) has no asyncio recorders, and the hash chain, validation and replay are CPU
work that would block the loop in any case; one bounded pool keeps both off it.
"""

import asyncio
import contextvars
import functools
import inspect
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

import psycopg

from ledger._aio_feed import AsyncChangeFeed
from ledger._api import ContextLedger
from ledger._domain import validation
from ledger._store.caller_transaction import AsyncPort
from ledger.errors import InvalidContextInput, LedgerClosed, LedgerError

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_MAX_THREADS = 8
"""Calls of one AsyncContextLedger that run at once, each in a thread."""
FEED_READ_THREADS = 2
"""Threads in which change feeds that are behind read the store: never the
threads that commands run in."""


def _in_thread(
    method: Callable[Concatenate[ContextLedger, P], T],
) -> Callable[Concatenate["AsyncContextLedger", P], Coroutine[Any, Any, T]]:
    """The ledger's method as a coroutine that runs it in the pool, in the user's
    turn (the ``user_id`` argument, first or by name, when it has one)."""

    name = method.__name__

    async def call(
        owner: "AsyncContextLedger", /, *args: P.args, **kwargs: P.kwargs
    ) -> T:
        given = kwargs.get("user_id", args[0] if args else None)
        # The user's turn is keyed by the id as the ledger checks it (a str
        # subclass with an odd hash cannot split or break the turns); a bad id
        # takes no turn and the method itself refuses it (and counts it).
        try:
            user = validation.optional_identifier("user_id", given)
        except InvalidContextInput:
            user = None
        connection = kwargs.get("connection")
        if connection is not None:
            # In the caller's transaction: no turn, since the append may wait for
            # another transaction that wrote the user, and a turn held meanwhile
            # would stop that transaction's own next command; the database
            # orders them. An AsyncConnection is used through the loop.
            user = None
            if isinstance(connection, psycopg.AsyncConnection):
                port = AsyncPort(connection, asyncio.get_running_loop())
                kwargs["connection"] = port
                try:
                    result: T = await _called(owner, name, args, kwargs, None)
                except asyncio.CancelledError:
                    # Before the caller's transaction can end (its rollback runs
                    # on this loop after this): the command's thread runs no
                    # further statement on the connection.
                    port.cancel()
                    raise
                return result
        called: T = await _called(owner, name, args, kwargs, user)
        return called

    call.__name__ = call.__qualname__ = method.__name__
    call.__doc__ = method.__doc__
    # What introspection (help(), IDEs) shows: the method's own parameters.
    sync = inspect.signature(inspect.unwrap(method))
    returns = sync.return_annotation
    shown = sync.replace(return_annotation=f"Coroutine[{returns}]")
    call.__signature__ = shown  # type: ignore[attr-defined]
    return call


async def _called(
    owner: "AsyncContextLedger",
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    user: str | None,
) -> Any:
    ledger = await owner.opened()
    # By name: a sharded ledger routes each method to the user's shard.
    bound = functools.partial(getattr(ledger, name), *args, **kwargs)
    return await owner.run(bound, user)


class AsyncContextLedger:
    """Every ``ContextLedger`` method as a coroutine of the same name, arguments
    and result, plus ``changes()`` as an async iterator.

    ``async with AsyncContextLedger.open(url) as ledger: ...`` (or ``await
    ledger.aclose()``). Opening connects in a thread on first use.
    """

    def __init__(
        self,
        opener: Callable[[], ContextLedger],
        *,
        max_threads: int = DEFAULT_MAX_THREADS,
    ) -> None:
        self.max_threads = validation.positive_int(
            "max_threads", max_threads, setting=True
        )
        self._opener = opener
        self._opening: asyncio.Future[ContextLedger] | None = None
        self._pool = ThreadPoolExecutor(
            max_workers=self.max_threads, thread_name_prefix="ctxledger"
        )
        self._readers = ThreadPoolExecutor(
            max_workers=FEED_READ_THREADS, thread_name_prefix="ctxledger-feed"
        )
        self._slots: asyncio.Semaphore | None = None
        self._turns: dict[str, tuple[asyncio.Lock, int]] = {}
        self._running: set[asyncio.Future[Any]] = set()
        self._closing = False
        self._closed: asyncio.Future[None] | None = None

    @classmethod
    def open(
        cls,
        url: str | None = None,
        *,
        max_threads: int = DEFAULT_MAX_THREADS,
        **options: Any,
    ) -> Self:
        """The ledger at ``url``, with the same options as ``ContextLedger.open``;
        ``max_threads`` bounds the calls that run at once."""
        return cls(
            functools.partial(ContextLedger.open, url, **options),
            max_threads=max_threads,
        )

    async def opened(self) -> ContextLedger:
        """The synchronous ledger underneath, opened (in a thread) on first use.
        A failed opening is tried again by the next call."""
        if self._closing:
            raise LedgerClosed
        if self._opening is None:
            loop = asyncio.get_running_loop()
            self._opening = loop.run_in_executor(self._pool, self._opener)
        opening = self._opening
        try:
            # Shielded: a cancelled first call does not drop the ledger it opens.
            return await asyncio.shield(opening)
        except LedgerError:
            if self._opening is opening:
                self._opening = None
            raise

    async def run(self, call: Callable[[], T], user_id: str | None = None) -> T:
        """Runs ``call`` in the pool, in ``user_id``'s turn if given."""
        if self._closing:
            raise LedgerClosed
        loop = asyncio.get_running_loop()
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_threads)
        slots = self._slots
        turn = self._join(user_id)
        try:
            if turn is not None:
                await turn.acquire()
        except BaseException:  # cancelled while waiting: nothing ran
            self._leave(user_id)
            raise

        def release(_: object = None) -> None:
            if turn is not None:
                turn.release()
                self._leave(user_id)

        try:
            await slots.acquire()
        except BaseException:  # cancelled while waiting: nothing ran
            release()
            raise
        if self._closing:  # closed while this call waited: it does not start
            slots.release()
            release()
            raise LedgerClosed
        # In a copy of the caller's context (run_in_executor does not carry it):
        # the call's span is a child of the awaiting task's current span.
        future = loop.run_in_executor(self._pool, contextvars.copy_context().run, call)
        self._running.add(future)
        future.add_done_callback(self._running.discard)
        future.add_done_callback(lambda _: slots.release())
        future.add_done_callback(release)
        # Shielded: cancelling the caller does not stop the thread, and the turn
        # and the slot are given back only when it is done.
        return await asyncio.shield(future)

    async def read(self, call: Callable[[], T]) -> T:
        """Runs a read of a change feed in the feeds' own threads (not the pool
        that commands use); LedgerClosed once closing."""
        if self._closing:
            raise LedgerClosed
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, call)

    def _join(self, user_id: str | None) -> asyncio.Lock | None:
        """The user's turn (a fair lock), counting one more call waiting for it."""
        if user_id is None:
            return None
        lock, calls = self._turns.get(user_id, (asyncio.Lock(), 0))
        self._turns[user_id] = (lock, calls + 1)
        return lock

    def _leave(self, user_id: str | None) -> None:
        if user_id is None:
            return
        lock, calls = self._turns[user_id]
        if calls <= 1:
            del self._turns[user_id]
        else:
            self._turns[user_id] = (lock, calls - 1)

    def changes(
        self, user_id: str | None = None, *, after: int | str | None = None
    ) -> AsyncChangeFeed:
        """``(position, event)`` of every event stored after ``after``, by any
        process, in log order, each once; only ``user_id``'s when given. With
        ``after=None`` it starts at the log's head when ``async with`` is entered
        (or the iteration starts). On a sharded ledger the position is text, a
        position per shard, and each shard's log is in order (see
        ``ContextLedger.changes``)."""
        return AsyncChangeFeed(self, user_id, after)

    @property
    def closing(self) -> bool:
        """Whether ``aclose()`` was called."""
        return self._closing

    async def aclose(self) -> None:
        """Closes the ledger: calls running in threads finish first, calls still
        waiting (and any made later) raise LedgerClosed, and the ledger's feeds
        end. Cancelling it does not stop the closing; calling it again waits for
        it."""
        self._closing = True
        if self._closed is None:
            self._closed = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closed)

    async def _close(self) -> None:
        while self._running:
            await asyncio.wait(set(self._running))
        opening, self._opening = self._opening, None
        if opening is not None:
            try:
                ledger = await asyncio.shield(opening)
            except LedgerError:
                ledger = None  # it never opened
            if ledger is not None:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(self._pool, ledger.close)
        self._pool.shutdown(wait=False)
        self._readers.shutdown(wait=False)

    async def __aenter__(self) -> Self:
        await self.opened()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    open_context = _in_thread(ContextLedger.open_context)
    update_context = _in_thread(ContextLedger.update_context)
    clear_context = _in_thread(ContextLedger.clear_context)
    clear_user = _in_thread(ContextLedger.clear_user)
    expire_due = _in_thread(ContextLedger.expire_due)
    get_context = _in_thread(ContextLedger.get_context)
    active_contexts = _in_thread(ContextLedger.active_contexts)
    history = _in_thread(ContextLedger.history)
    contexts_as_of = _in_thread(ContextLedger.contexts_as_of)
    context_history = _in_thread(ContextLedger.context_history)
    verify_chain = _in_thread(ContextLedger.verify_chain)
    chain_size = _in_thread(ContextLedger.chain_size)
    export = _in_thread(ContextLedger.export)
    forget_user = _in_thread(ContextLedger.forget_user)
    forget_inactive = _in_thread(ContextLedger.forget_inactive)
    inactive_users = _in_thread(ContextLedger.inactive_users)
    catch_up_tree = _in_thread(ContextLedger.catch_up_tree)
    sign_checkpoint = _in_thread(ContextLedger.sign_checkpoint)
    sign_checkpoints = _in_thread(ContextLedger.sign_checkpoints)
    verify_checkpoint = _in_thread(ContextLedger.verify_checkpoint)
    verify_checkpoints = _in_thread(ContextLedger.verify_checkpoints)
    latest_checkpoint = _in_thread(ContextLedger.latest_checkpoint)
    prove_event = _in_thread(ContextLedger.prove_event)
