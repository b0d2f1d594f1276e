"""Tampering: what tests do to stored data behind the ledger's back, as an intruder
with database access, a defect or an older release would. Edits stored rows with SQL,
plants events the aggregate would never decide, and changes view rows."""

import sqlite3
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg

from ledger import ContextLedger, LedgerEvent
from ledger._domain.contexts import UserSnapshot, user_aggregate_id
from ledger._domain.events import ContextCreated, ContextEvent, ContextUpdated
from ledger._domain.hashing import GENESIS_HASH, chain_hash
from ledger._store.application import open_application
from ledger._store.keys import place_of, seal
from ledger._store.serialization import MsgpackTranscoder
from ledger._store.urls import storage_for
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


# Stored events and snapshots, edited with SQL as an intruder with database access
# would. States are the stored msgpack maps; user and version pick the row.


def stored_event_bytes(url: str, user: str, version: int) -> bytes:
    """The stored state of the user's event ``version``, as bytes."""
    rows = execute_sql(
        url,
        "SELECT state FROM {events} "
        "WHERE originator_id = {p} AND originator_version = {p}",
        (stream_key(url, user), version),
    )
    return bytes(rows[0][0])


def set_stored_event_bytes(url: str, user: str, version: int, state: bytes) -> None:
    """Replaces the stored state of the user's event ``version``."""
    execute_sql(
        url,
        "UPDATE {events} SET state = {p} "
        "WHERE originator_id = {p} AND originator_version = {p}",
        (state, stream_key(url, user), version),
    )


def stored_event(url: str, user: str, version: int) -> dict[str, Any]:
    """The stored state of the user's event ``version``, decoded."""
    state: dict[str, Any] = MsgpackTranscoder().decode(
        stored_event_bytes(url, user, version)
    )
    return state


def store_event(url: str, user: str, version: int, state: dict[str, Any]) -> None:
    """Encodes ``state`` and stores it as the user's event ``version``."""
    set_stored_event_bytes(url, user, version, MsgpackTranscoder().encode(state))


def edit_event(url: str, user: str, version: int, **changes: object) -> None:
    """Sets fields of the stored state of the user's event ``version``."""
    state = stored_event(url, user, version)
    state.update(changes)
    store_event(url, user, version, state)


def delete_event(url: str, user: str, version: int) -> None:
    execute_sql(
        url,
        "DELETE FROM {events} WHERE originator_id = {p} AND originator_version = {p}",
        (stream_key(url, user), version),
    )


def swap_versions(url: str, user: str, one: int, two: int) -> None:
    """Gives the user's events ``one`` and ``two`` each other's version."""
    key = stream_key(url, user)
    for old, new in ((one, -1), (two, one), (-1, two)):
        execute_sql(
            url,
            "UPDATE {events} SET originator_version = {p} "
            "WHERE originator_id = {p} AND originator_version = {p}",
            (new, key, old),
        )


def stored_snapshots(url: str, user: str) -> list[tuple[int, dict[str, Any]]]:
    """The user's stored snapshots, oldest first: (version, decoded state)."""
    rows = execute_sql(
        url,
        "SELECT originator_version, state FROM {snapshots} WHERE originator_id = {p} "
        "ORDER BY originator_version",
        (stream_key(url, user),),
    )
    return [(v, MsgpackTranscoder().decode(bytes(state))) for v, state in rows]


def latest_snapshot(url: str, user: str) -> tuple[int, dict[str, Any]]:
    """The user's newest stored snapshot: (version, decoded state)."""
    return stored_snapshots(url, user)[-1]


def store_snapshot(url: str, user: str, version: int, state: dict[str, Any]) -> None:
    """Encodes ``state`` and stores it as the user's snapshot at ``version``."""
    execute_sql(
        url,
        "UPDATE {snapshots} SET state = {p} "
        "WHERE originator_id = {p} AND originator_version = {p}",
        (MsgpackTranscoder().encode(state), stream_key(url, user), version),
    )


def store_snapshot_as_format_2(url: str, user: str) -> int:
    """Stores the user's newest snapshot again as the previous release did
    (format 2: no digest, nothing sealed when there are no contexts)."""
    stream = user_aggregate_id(user)
    with ContextLedger.open(url) as ledger:
        app = ledger._app
        assert app.snapshots is not None
        with app.keys.reading():
            (snapshot,) = app.snapshots.get(stream, desc=True, limit=1)
        assert isinstance(snapshot, UserSnapshot)
        state = snapshot.model_dump(exclude={"originator_id", "originator_version"})
        metadata = [context.pop("metadata") for context in state["contexts"]]
        if metadata:
            version, generation = snapshot.originator_version, snapshot.key_generation
            cipher = app.keys.for_writing(stream, generation)
            place = place_of(b"ctxledger snapshot", stream, version, generation)
            state["sealed"] = seal(cipher, place, MsgpackTranscoder().encode(metadata))
        state["format"] = 2
    store_snapshot(url, user, snapshot.originator_version, state)
    return snapshot.originator_version


def _events_up_to(url: str, user: str, version: int | None) -> list[LedgerEvent]:
    with ContextLedger.open(url) as ledger:
        return ledger.history(user, limit=version)


def rewrite_stream(url: str, user: str, **changes: object) -> None:
    """Rewrites every event of the user's stream with ``changes``, each encoded
    again by the ledger's codec and carrying the hash of the event rewritten
    before it, as an intruder who knows the chain's rule would: ``verify_chain``
    still holds. The user must have no snapshot (its last hash would differ)."""
    previous = GENESIS_HASH
    for version in range(1, len(_events_up_to(url, user, None)) + 1):
        edit_event(url, user, version, prev_hash=previous, **changes)
        event = _events_up_to(url, user, version)[-1]
        previous = chain_hash(event.model_dump(mode="json"))
