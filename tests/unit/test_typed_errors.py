"""Errors are typed, explain themselves, and survive pickling across processes."""

import pickle

import pytest

from ledger import (
    ConcurrencyConflict,
    ContextLimitExceeded,
    ContextNotFound,
    InvalidContextInput,
    LedgerClosed,
    LedgerConfigError,
    LedgerCorrupted,
    LedgerError,
    StorageUnavailable,
)

ERRORS: list[LedgerError] = [
    InvalidContextInput("user_id", "none", "is a placeholder", "pass the real id"),
    ContextNotFound("alice", "ctx-1"),
    ContextLimitExceeded("alice", 10),
    ConcurrencyConflict("alice", 25),
    LedgerConfigError("bad URL"),
    StorageUnavailable("sqlite file x.db", OSError("disk I/O error")),
    LedgerClosed(),
    LedgerCorrupted("alice", "version 3 does not follow version 1"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_every_error_pickles_with_its_message_and_values(error: LedgerError) -> None:
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301  (our own bytes)

    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert {k: str(v) for k, v in vars(copy).items()} == {
        k: str(v) for k, v in vars(error).items()
    }


def test_builtin_bases_match_the_meaning() -> None:
    assert isinstance(ERRORS[0], ValueError)
    assert isinstance(ERRORS[1], LookupError)
    assert isinstance(ERRORS[4], ValueError)
    assert isinstance(ERRORS[5], ConnectionError)
    assert isinstance(ERRORS[6], RuntimeError)
