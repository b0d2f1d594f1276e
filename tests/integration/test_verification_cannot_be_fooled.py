"""Verification proves what readers rely on: every snapshot against the fold of
the events up to its version, one user's events against the log's order, and the
one snapshot rule shared by loading and as-of reads.

Each test edits stored rows with SQL, as an intruder with write access to the
database would, on a real SQLite file and a real PostgreSQL schema.
"""

import contextlib
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from freezegun import freeze_time

from ledger import ContextLedger, ContextNotFound, InvalidContextInput
from ledger._domain.contexts import user_aggregate_id
from ledger._store.application import SNAPSHOT_INTERVAL
from ledger._store.keys import place_of, seal, unseal
from ledger._store.serialization import MsgpackTranscoder, PydanticMapper
from tests.helpers import execute_sql, run, stream_key

START = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
_CODEC = MsgpackTranscoder()
_SNAPSHOT = b"ctxledger snapshot"


def _history(url: str, user: str, events: int) -> None:
    """``events`` events of ``user``: two threads, one opened with a request id
    each turn, so the snapshot has contexts with metadata and remembered ids."""
    with ContextLedger.open(url) as ledger, freeze_time(START) as clock:
        turn = 0
        while len(ledger.history(user)) < events:
            ledger.open_context(user, "t1", metadata={"turn": turn})
            ledger.open_context(user, f"t{turn % 3 + 2}", request_id=f"req-{turn}")
            clock.tick(1)
            turn += 1


def _snapshot(url: str, user: str) -> tuple[int, dict[str, Any]]:
    rows = execute_sql(
        url,
        "SELECT originator_version, state FROM {snapshots} WHERE originator_id = {p} "
        "ORDER BY originator_version DESC",
        (stream_key(url, user),),
    )
    version, state = rows[0]
    return version, _CODEC.decode(bytes(state))


def _set_snapshot(url: str, user: str, version: int, state: dict[str, Any]) -> None:
    execute_sql(
        url,
        "UPDATE {snapshots} SET state = {p} WHERE originator_id = {p} "
        "AND originator_version = {p}",
        (_CODEC.encode(state), stream_key(url, user), version),
    )


def _reseal(url: str, user: str, edit: Any) -> int:
    """Opens the user's newest format-3 snapshot with the data key the database
    holds (no master key), edits it and seals it again, digest and all: what
    anyone who can read and write the tables can do."""
    version, state = _snapshot(url, user)
    assert state["format"] == 3
    stream = user_aggregate_id(user)
    with ContextLedger.open(url) as ledger:
        mapper = cast(PydanticMapper, ledger._app.mapper)
        cipher = ledger._app.keys.for_writing(stream, state["key_generation"])
        place = place_of(_SNAPSHOT, stream, version, state["key_generation"])
        metadata = _CODEC.decode(
            unseal(cipher, place + mapper.snapshot_digest(state), state["sealed"])
        )
        edit(state, metadata)
        state.pop("sealed")
        state["sealed"] = seal(
            cipher, place + mapper.snapshot_digest(state), _CODEC.encode(metadata)
        )
    _set_snapshot(url, user, version, state)
    return version


def _fault(url: str, user: str | None = None) -> tuple[int, str] | None:
    with ContextLedger.open(url) as ledger:
        report = ledger.verify_chain(user)
    if report.holds:
        return None
    fault = report.broken[0].fault
    assert fault is not None
    return fault.version, fault.fault


def _forge_metadata(state: dict[str, Any], metadata: list[Any]) -> None:
    metadata[0] = {"turn": "forged"}


def _drop_a_request(state: dict[str, Any], metadata: list[Any]) -> None:
    state["requests"].pop()


@pytest.mark.parametrize(
    "forge", [_forge_metadata, _drop_a_request], ids=["metadata", "request id"]
)
def test_a_snapshot_resealed_with_the_key_in_the_database_is_reported(
    durable_url: str, forge: Any
) -> None:
    _history(durable_url, "ann", SNAPSHOT_INTERVAL + 4)
    version = _reseal(durable_url, "ann", forge)

    assert _fault(durable_url) == (version, "altered")
    assert _fault(durable_url, "ann") == (version, "altered")
    result = run("--db", durable_url, "verify", "--chain", cwd=_cwd())
    assert result.returncode == 1, result.stdout + result.stderr
    assert "altered" in result.stdout


def test_a_snapshot_that_agrees_with_its_events_holds(durable_url: str) -> None:
    _history(durable_url, "bea", 3 * SNAPSHOT_INTERVAL + 4)

    assert _fault(durable_url) is None
    assert _fault(durable_url, "bea") is None


def test_as_of_reads_pass_over_a_planted_format_2_snapshot(durable_url: str) -> None:
    _history(durable_url, "cal", SNAPSHOT_INTERVAL + 4)
    at = START + timedelta(minutes=5)
    with ContextLedger.open(durable_url) as ledger:
        before = ledger.contexts_as_of("cal", at)
    version, state = _snapshot(durable_url, "cal")
    state.pop("sealed")
    state["format"] = 2
    forged = START - timedelta(days=90)
    for context in state["contexts"]:
        context.update(created_at=forged, metadata={})
    _set_snapshot(durable_url, "cal", version, state)

    with ContextLedger.open(durable_url) as ledger:
        after = ledger.contexts_as_of("cal", at)
        active = ledger.active_contexts("cal")

    assert after == before
    assert all(context.created_at != forged for context in after + active)
    assert _fault(durable_url, "cal") == (version, "altered")


def _move_to_the_end_of_the_log(url: str, user: str, version: int) -> None:
    """Gives the user's event a position after every other event."""
    key = stream_key(url, user)
    (row,) = execute_sql(
        url,
        "SELECT originator_id, originator_version, topic, state FROM {events} "
        "WHERE originator_id = {p} AND originator_version = {p}",
        (key, version),
    )
    execute_sql(
        url,
        "DELETE FROM {events} WHERE originator_id = {p} AND originator_version = {p}",
        (key, version),
    )
    execute_sql(
        url,
        "INSERT INTO {events} (originator_id, originator_version, topic, state) "
        "VALUES ({p}, {p}, {p}, {p})",
        tuple(row),
    )


def test_one_users_verification_finds_an_event_moved_in_the_log(
    durable_url: str,
) -> None:
    with ContextLedger.open(durable_url) as ledger:
        for thread in ("a", "b", "c"):
            ledger.open_context("dan", thread)
        ledger.open_context("eve", "a")
    _move_to_the_end_of_the_log(durable_url, "dan", 2)

    assert _fault(durable_url) == (2, "reordered")
    assert _fault(durable_url, "dan") == (2, "reordered")
    assert _fault(durable_url, "eve") is None
    result = run("--db", durable_url, "verify", "--chain", "--user", "dan", cwd=_cwd())
    assert result.returncode == 1, result.stdout + result.stderr
    assert "reordered" in result.stdout


def _cwd() -> Path:
    return Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("limit", [2**63, 2**64 + 5, 10**30])
def test_a_history_limit_beyond_any_log_returns_every_event(
    ledger_url: str, limit: int
) -> None:
    with ContextLedger.open(ledger_url) as ledger:
        ledger.open_context("fay", "a")
        ledger.open_context("fay", "a")

        assert len(ledger.history("fay", limit=limit)) == 2


def test_the_cli_history_limit_beyond_any_log_prints_every_event(
    sqlite_url: str,
) -> None:
    with ContextLedger.open(sqlite_url) as ledger:
        ledger.open_context("gus", "a")

    result = run("--db", sqlite_url, "history", "gus", "--limit", "9" * 20, cwd=_cwd())

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "created" in result.stdout


def test_a_key_destroyed_without_a_forgotten_event_is_reported(
    durable_url: str,
) -> None:
    with ContextLedger.open(durable_url) as ledger:
        ledger.open_context("hal", "a", metadata={"note": "private"})
        ledger.open_context("ida", "a", metadata={"note": "private"})
    execute_sql(
        durable_url,
        "UPDATE ctxledger_keys SET destroyed = 1, data_key = {p} "
        "WHERE stream_id = {p} AND generation = 0",
        (b"", user_aggregate_id("hal").hex),
    )

    with ContextLedger.open(durable_url) as ledger:
        report = ledger.verify_chain()
        one = ledger.verify_chain("hal")

    assert [(u.user_id, u.fault.fault if u.fault else None) for u in report.broken] == [
        ("hal", "key-rows")
    ]
    assert one.broken[0].fault is not None
    assert "no forgotten event" in one.broken[0].fault.detail


def test_an_erasure_leaves_no_key_finding(durable_url: str) -> None:
    with ContextLedger.open(durable_url) as ledger:
        ledger.open_context("jay", "a", metadata={"note": "private"})
        ledger.forget_user("jay")
        ledger.open_context("jay", "b", metadata={"note": "again"})

        assert ledger.verify_chain().holds
        assert ledger.verify_chain("jay").holds


def test_a_planted_key_row_on_a_master_keyed_ledger_is_reported(
    durable_url: str,
) -> None:
    master = "ab" * 32
    with ContextLedger.open(durable_url, master_key=master) as ledger:
        ledger.open_context("kay", "a", metadata={"note": "private"})
    execute_sql(
        durable_url,
        "INSERT INTO ctxledger_keys (stream_id, generation, data_key, wrapped, "
        "destroyed) VALUES ({p}, 0, {p}, 0, 0)",
        (user_aggregate_id("lee").hex, b"\x01" * 32),
    )

    with ContextLedger.open(durable_url, master_key=master) as ledger:
        report = ledger.verify_chain()

    (broken,) = report.broken
    assert broken.fault is not None
    assert broken.fault.fault == "key-rows"
    assert "not authenticated" in broken.fault.detail


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_snapshots_of_random_histories_equal_the_fold_of_their_events(
    durable_url: str, seed: int
) -> None:
    """Every command and option that changes a user's state (reuse, metadata
    patches, TTLs and expiries, clears, eviction, request ids, erasure), so the
    fold verification proves snapshots with follows the aggregate everywhere."""
    chooser = random.Random(seed)
    with (
        ContextLedger.open(
            durable_url, max_contexts_per_user=3, on_limit="evict"
        ) as ledger,
        freeze_time(START) as clock,
    ):
        for turn in range(6 * SNAPSHOT_INTERVAL):
            with contextlib.suppress(ContextNotFound, InvalidContextInput):
                # a repeat whose context has ended since, or whose call differs
                _random_command(ledger, chooser, turn)
            clock.tick(chooser.choice([0, 1, 30, 400]))
        report = ledger.verify_chain()
        one = ledger.verify_chain("mia")

    assert report.holds, report.broken
    assert one.holds, one.broken
    assert len(_all_snapshots(durable_url, "mia")) >= 2


def _random_command(ledger: ContextLedger, chooser: random.Random, turn: int) -> None:
    """One command with its own request id; one in ten repeats an earlier call
    exactly (answered from the request window, nothing appended)."""
    if chooser.random() < 0.1 and turn > 3:
        turn = chooser.randrange(turn)
        chooser = random.Random(turn)
    thread = f"t{chooser.randrange(5)}"
    roll = chooser.random()
    if roll < 0.5:
        ledger.open_context(
            "mia",
            thread,
            metadata={"turn": turn, f"k{turn % 4}": [turn, None]},
            ttl_seconds=chooser.choice([None, 60.0, 3600.0]),
            request_id=f"open-{turn}",
        )
    elif roll < 0.7 and (active := ledger.active_contexts("mia")):
        target = chooser.choice(active).context_id
        ledger.update_context(
            "mia", target, metadata={"k0": None, "n": turn}, request_id=f"up-{turn}"
        )
    elif roll < 0.85 and (active := ledger.active_contexts("mia")):
        ledger.clear_context("mia", chooser.choice(active).context_id)
    elif roll < 0.95:
        ledger.expire_due()
    elif roll < 0.953:  # rare: an erasure deletes the user's snapshots
        ledger.forget_user("mia")
    else:
        ledger.clear_user("mia", request_id=f"all-{turn}")


def _all_snapshots(url: str, user: str) -> list[Any]:
    return execute_sql(
        url,
        "SELECT originator_version FROM {snapshots} WHERE originator_id = {p}",
        (stream_key(url, user),),
    )
