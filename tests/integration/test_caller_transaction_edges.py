"""Commands in the caller's transaction at its edges: a cancelled async call
whose transaction rolls back, an application's transaction held open while the
ledger's own command waits for the user, isolation levels other than READ
COMMITTED, and a deadlock between two applications' transactions."""

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from ledger import AsyncContextLedger, ConcurrencyConflict, ContextLedger
from ledger import InvalidContextInput as Refused
from ledger._store.commands import LOCK_STRIPES
from tests.caller_app import kinds
from tests.helpers import dsn_and_schema

pytestmark = pytest.mark.postgres


@pytest.fixture
def ledger(postgres_url: str) -> Iterator[ContextLedger]:
    with ContextLedger.open(postgres_url) as opened:
        yield opened


@pytest.fixture
def dsn(postgres_url: str) -> str:
    return dsn_and_schema(postgres_url)[0]


@pytest.mark.parametrize("autocommit", [False, True])
def test_a_cancelled_async_call_stores_nothing_after_its_transaction_rolls_back(
    postgres_url: str, ledger: ContextLedger, dsn: str, autocommit: bool
) -> None:
    async def scenario() -> None:
        async with AsyncContextLedger.open(postgres_url) as ledger_async:
            holder = await psycopg.AsyncConnection.connect(dsn)
            # Another transaction holds the user's first version, so the call
            # below waits in its thread when its task is cancelled.
            await ledger_async.open_context("u", "held", connection=holder)
            caller = await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit)

            async def in_transaction() -> None:
                async with caller.transaction():
                    await ledger_async.open_context("u", "cancelled", connection=caller)

            task = asyncio.create_task(in_transaction())
            await asyncio.sleep(0.4)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await holder.commit()  # the cancelled call's retry would now go on
            await asyncio.sleep(1.0)
            await caller.commit()
            await holder.close()
            await caller.close()

    asyncio.run(scenario())

    assert kinds(ledger.history("u")) == [(1, "created", "held")]


def _same_stripe(user: str) -> str:
    """Another user whose commands take turns with ``user``'s in this process."""
    stripe = hash(user) % LOCK_STRIPES
    return next(
        other
        for other in (f"neighbour-{n}" for n in range(100_000))
        if hash(other) % LOCK_STRIPES == stripe
    )


def test_the_ledgers_own_command_waits_a_bounded_while_for_an_open_transaction(
    ledger: ContextLedger, dsn: str
) -> None:
    neighbour = _same_stripe("u")
    with psycopg.connect(dsn) as app:
        ledger.open_context("u", "in the app's transaction", connection=app)
        outcome: dict[str, Any] = {}

        def own_command() -> None:
            try:
                ledger.open_context("u", "own")
            except ConcurrencyConflict as conflict:
                outcome["conflict"] = conflict

        waiting = threading.Thread(target=own_command)
        waiting.start()
        # Its turn is held while it waits: the neighbour goes on once the wait
        # for the open transaction has ended, not when the transaction does.
        ledger.open_context(neighbour, "t")
        waiting.join(30)
        app.rollback()

    assert not waiting.is_alive()
    assert "waited for another transaction that holds the user's next" in "".join(
        outcome["conflict"].__notes__
    )
    assert kinds(ledger.history(neighbour)) == [(1, "created", "t")]
    assert ledger.history("u") == []


@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
@pytest.mark.parametrize("how", ["psycopg", "SET TRANSACTION"])
def test_a_transaction_not_read_committed_is_refused_and_goes_on(
    ledger: ContextLedger, dsn: str, level: str, how: str
) -> None:
    ledger.open_context("u", "t0")
    with psycopg.connect(dsn) as app:
        if how == "psycopg":
            app.isolation_level = psycopg.IsolationLevel[level.replace(" ", "_")]
        else:
            app.execute(f"SET TRANSACTION ISOLATION LEVEL {level}")

        with pytest.raises(Refused, match="not READ COMMITTED"):
            ledger.open_context("u", "t1", connection=app)

        assert app.execute("SELECT 1").fetchone() == (1,)  # the transaction goes on
        app.commit()

    assert kinds(ledger.history("u")) == [(1, "created", "t0")]


def test_a_deadlock_between_two_transactions_is_a_conflict_saying_to_run_it_again(
    ledger: ContextLedger, dsn: str
) -> None:
    ledger.open_context("p", "t0")
    ledger.open_context("q", "t0")
    results: dict[str, str] = {}
    barrier = threading.Barrier(2)

    def writes(name: str, first: str, second: str) -> None:
        with psycopg.connect(dsn) as app:
            ledger.open_context(first, f"t{name}", connection=app)
            barrier.wait(10)
            try:
                ledger.open_context(second, f"t{name}2", connection=app)
            except ConcurrencyConflict as conflict:
                results[name] = "".join(conflict.__notes__)
                app.rollback()
                return
            app.commit()
            results[name] = "committed"

    threads = [
        threading.Thread(target=writes, args=("a", "p", "q")),
        threading.Thread(target=writes, args=("b", "q", "p")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert sorted(results.values())[0] == "committed"
    aborted = sorted(results.values())[1]
    assert "the database aborted your transaction" in aborted
    assert "run it again, whole" in aborted
    assert ledger.verify_chain().holds
