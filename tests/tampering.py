"""Tampering: what tests do to stored data behind the ledger's back, as an intruder
with database access, a defect or an older release would. Edits stored rows with SQL,
plants events the aggregate would never decide, and changes view rows."""

import sqlite3
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg

from ledger import ContextLedger
from ledger.domain.contexts import user_aggregate_id
from ledger.domain.events import ContextCreated, ContextEvent, ContextUpdated
from ledger.store.application import open_application
from ledger.store.urls import storage_for
from projections import Projections

# The metadata store_as_an_older_release stores: NUL characters, refused today.
NUL_METADATA = {"note": "before\x00after", "key\x00": 1, "list": ["\x00"]}


def execute_sql(url: str, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Runs SQL on a test database directly, as an operator (or intruder) would.

    ``{events}`` and ``{snapshots}`` name the ledger's tables on either backend,
    ``{p}`` is a parameter marker, ``{log}`` the events' position column, and
    ``{c1}`` is the byte 0xC1 (never valid msgpack) as a literal. Returns the rows
    a query selects.
    """
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        names = {
            "events": "stored_events",
            "snapshots": "stored_snapshots",
            "c1": "X'C1'",
            "p": "?",
            "log": "rowid",
        }
        with sqlite3.connect(path) as connection:
            return connection.execute(statement.format(**names), params).fetchall()
    dsn, _, schema = url.partition("?schema=")
    names = {
        "events": "ctxledger_events",
        "snapshots": "ctxledger_snapshots",
        "c1": "decode('c1', 'hex')",
        "p": "%s",
        "log": "notification_id",
    }
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(f'SET search_path TO "{schema}"')
        cursor = connection.execute(statement.format(**names), params)
        return cursor.fetchall() if cursor.description else []


def stream_key(url: str, user_id: str) -> Any:
    """How the user's stream id is stored: hex text on SQLite, a uuid on PostgreSQL."""
    aggregate_id = user_aggregate_id(user_id)
    return aggregate_id.hex if url.startswith("sqlite:///") else aggregate_id


def append_raw_event(
    url: str, user_id: str, event_class: type[ContextEvent], **fields: Any
) -> None:
    """Writes an event the aggregate would never decide, as a defect (or an older
    release) might have stored it: version, time, user and chain are right."""
    application = open_application(storage_for(url))
    now = datetime.now(tz=UTC)
    aggregate = application.load(user_id, now)
    values: dict[str, Any] = {
        "context_id": str(uuid.uuid4()),
        "run_id": None,
        "metadata": {},
        **fields,
    }
    event = event_class.model_construct(
        originator_id=aggregate.id,
        originator_version=aggregate.version + 1,
        timestamp=now,
        user_id=user_id,
        prev_hash=aggregate.last_hash,
        **values,
    )
    application.events.put([event])
    application.close()


def append_update_of_a_context_never_opened(url: str, user_id: str) -> None:
    """An update of a context never opened: no view can apply it."""
    append_raw_event(url, user_id, ContextUpdated, thread_id="t1")


def append_raw_creation(url: str, user_id: str, thread_id: str) -> None:
    """A second creation on a thread with an active context: the defect the
    continuity view exists to expose."""
    append_raw_event(
        url, user_id, ContextCreated, thread_id=thread_id, ttl_seconds=None
    )


def store_as_an_older_release(url: str, user_id: str) -> None:
    """Stores what releases before NUL characters were refused accepted: one
    context with NUL in its metadata (left open) and one cleared with NUL in its
    reason, through the event store's application, without the API's checks."""
    application = open_application(storage_for(url))
    try:
        now = datetime.now(tz=UTC)
        aggregate = application.load(user_id, now)
        options: dict[str, Any] = {
            "run_id": None,
            "ttl_seconds": None,
            "default_ttl_seconds": None,
            "now": now,
            "limit": 100,
        }
        aggregate.open("t1", metadata=NUL_METADATA, **options)
        ended = aggregate.open("t2", metadata={}, **options)
        aggregate.clear(ended.context_id, reason="bye\x00", now=now)
        application.record(aggregate)
    finally:
        application.close()


def lose_alices_active_row(url: str, ledger: ContextLedger, views: Projections) -> None:
    """Positions 1-2 applied; alice's row is then deleted from the active view
    behind its back, so her update at position 4 (between carol's and dave's
    events) contradicts the view."""
    context = ledger.open_context("alice", "t1")
    ledger.open_context("bob", "t1")
    views.catch_up()
    execute_sql(url, "DELETE FROM ctxl_active_contexts WHERE user_id = 'alice'")
    ledger.open_context("carol", "t1")
    ledger.update_context("alice", context.context_id, metadata={"n": 1})
    ledger.open_context("dave", "t1")
