"""How the CLI reports the ledger's errors."""

import sys
from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

from ctxledger._cli import render
from ledger import LedgerError

P = ParamSpec("P")
R = TypeVar("R")


def reports_ledger_errors(command: Callable[P, R]) -> Callable[P, R]:
    """A LedgerError becomes ``Name: message`` on stderr and exit status 1."""

    @wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except LedgerError as error:
            render.note(f"{type(error).__name__}: {error}")
            for note in getattr(error, "__notes__", ()):
                render.note(f"  {note}")
            sys.exit(1)

    return wrapper
