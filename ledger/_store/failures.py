"""The one place where the database's failures become ``StorageUnavailable``.

``StorageClient`` is the base of ``ContextLedger`` and ``Projections``: every public
method a subclass defines runs inside ``storage_failures``, applied here when the
class is created, so a method added later cannot forget it. The write path marks
its own failures as writes (``LedgerApplication.record``).
"""

import functools
import inspect
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Self

import psycopg
from eventsourcing.persistence import (
    ConnectionPoolClosedError,
    IntegrityError,
    PersistenceError,
)
from psycopg_pool import PoolClosed

from ledger._store.shard_guard import refusal_of
from ledger._store.urls import Storage
from ledger.errors import LedgerClosed, LedgerConfigError, StorageUnavailable

DATABASE_ERRORS = (PersistenceError, psycopg.Error, sqlite3.Error)


@contextmanager
def storage_failures(storage: Storage, *, writing: bool = False) -> Iterator[None]:
    """A failure of the database inside becomes StorageUnavailable, naming it.

    A conflict (the library's IntegrityError) passes: commands retry it.
    """
    try:
        yield
    except IntegrityError:
        raise
    except (ConnectionPoolClosedError, *DATABASE_ERRORS) as error:
        raise ledger_error(storage, error, writing=writing) from error


def ledger_error(
    storage: Storage, error: BaseException, *, writing: bool = False
) -> BaseException:
    """The ledger's error for a failure of the database (a new one each call), or
    the error itself if it is not one."""
    if isinstance(error, ConnectionPoolClosedError) or (  # SQLite's, once closed
        isinstance(error, DATABASE_ERRORS) and _pool_closed(error)  # PostgreSQL's
    ):
        return LedgerClosed()
    if not isinstance(error, DATABASE_ERRORS) or isinstance(error, IntegrityError):
        return error
    if refusal_of(error) is not None:  # a shard's guard: nothing was stored
        return LedgerConfigError(
            f"{storage.description} refused a write of a user that belongs to "
            f"another shard ({error}); nothing was stored. This ledger was opened "
            "before its database became a shard or the user moved: reopen it with "
            "ContextLedger.open(url) to route each user to its shard"
        )
    unavailable = StorageUnavailable(storage.description, error, writing=writing)
    for note in getattr(error, "__notes__", ()):
        unavailable.add_note(note)
    return unavailable


def _pool_closed(error: BaseException) -> bool:
    """Whether the error comes from a connection pool that was closed."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, PoolClosed):
            return True
        cause = cause.__cause__
    return False


class ActiveCalls:
    """The calls under way on an object, by thread. ``close()`` refuses new ones
    and waits for those of other threads (the closing thread's own, say a signal
    handler's, are not waited for: that would never end)."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._by_thread: Counter[int] = Counter()
        self.closed = False

    @contextmanager
    def running(self) -> Iterator[bool]:
        """Counts a call; yields False (the caller does nothing) once closed."""
        me = threading.get_ident()
        with self._changed:
            if self.closed:
                opened = False
            else:
                opened = True
                self._by_thread[me] += 1
        if not opened:
            yield False
            return
        try:
            yield True
        finally:
            with self._changed:
                self._by_thread[me] -= 1
                if not self._by_thread[me]:
                    del self._by_thread[me]
                self._changed.notify_all()

    def close(self, timeout: float | None = None) -> None:
        """Refuses new calls; waits for the other threads' calls (at most
        ``timeout`` seconds, if given)."""
        me = threading.get_ident()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            self.closed = True
            while any(thread != me for thread in self._by_thread):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return
                self._changed.wait(left)


def _guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def generator(owner: StorageClient, /, *args: Any, **kwargs: Any) -> Any:
            with storage_failures(owner.storage):
                yield from method(owner, *args, **kwargs)

        return generator

    @functools.wraps(method)
    def guarded(owner: StorageClient, /, *args: Any, **kwargs: Any) -> Any:
        with owner.calls.running() as opened:
            if not opened:
                raise LedgerClosed
            with storage_failures(owner.storage):
                return method(owner, *args, **kwargs)

    return guarded


class StorageClient:
    """Owns an application on a storage: ``close()`` closes it, and so does leaving
    a ``with`` block. Database failures of public methods become
    StorageUnavailable; once closed they raise LedgerClosed, and closing waits for
    the calls under way in other threads (closing SQLite under a running call
    would crash the process)."""

    storage: Storage
    calls: ActiveCalls
    _app: Any

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        client = super().__new__(cls)
        client.calls = ActiveCalls()
        return client

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, value in list(vars(cls).items()):
            if (
                not name.startswith("_")
                and name != "close"
                and inspect.isfunction(value)
            ):
                setattr(cls, name, _guarded(value))

    def close(self) -> None:
        """Closes it: new calls raise LedgerClosed; calls under way in other
        threads finish first. Closing again does nothing."""
        if self.calls.closed:
            return
        self.calls.close()
        self._before_close()
        self._app.close()

    def _before_close(self) -> None:
        """What a subclass closes first (after the calls under way ended)."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
