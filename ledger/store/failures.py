"""The one place where the database's failures become ``StorageUnavailable``.

``StorageClient`` is the base of ``ContextLedger`` and ``Projections``: every public
method a subclass defines runs inside ``storage_failures``, applied here when the
class is created, so a method added later cannot forget it. The write path marks
its own failures as writes (``LedgerApplication.record``).
"""

import functools
import inspect
import sqlite3
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

from ledger.errors import LedgerClosed, StorageUnavailable
from ledger.store.urls import Storage

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
    except ConnectionPoolClosedError as closed:  # SQLite's, once closed
        raise LedgerClosed from closed
    except DATABASE_ERRORS as error:
        if _pool_closed(error):  # PostgreSQL's, once closed
            raise LedgerClosed from error
        unavailable = StorageUnavailable(storage.description, error, writing=writing)
        for note in getattr(error, "__notes__", ()):
            unavailable.add_note(note)
        raise unavailable from error


def _pool_closed(error: BaseException) -> bool:
    """Whether the error comes from a connection pool that was closed."""
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, PoolClosed):
            return True
        cause = cause.__cause__
    return False


def _guarded(method: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isgeneratorfunction(method):

        @functools.wraps(method)
        def generator(owner: StorageClient, /, *args: Any, **kwargs: Any) -> Any:
            with storage_failures(owner.storage):
                yield from method(owner, *args, **kwargs)

        return generator

    @functools.wraps(method)
    def guarded(owner: StorageClient, /, *args: Any, **kwargs: Any) -> Any:
        with storage_failures(owner.storage):
            return method(owner, *args, **kwargs)

    return guarded


class StorageClient:
    """Owns an application on a storage: ``close()`` closes it, and so does leaving
    a ``with`` block. Database failures of public methods become
    StorageUnavailable."""

    storage: Storage
    _app: Any

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, value in list(vars(cls).items()):
            if not name.startswith("_") and inspect.isfunction(value):
                setattr(cls, name, _guarded(value))

    def close(self) -> None:
        self._app.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
