"""verify_chain and `ctxledger verify --chain` against events changed with SQL.

Each test builds a history on a real SQLite file or a real PostgreSQL schema,
changes the stored events as an intruder with database access would, and checks
that the fault is found, named (user, version, kind of fault) and confined to the
user whose events were touched.
"""

import json
from datetime import UTC, datetime
from pathlib import Path

import msgpack
import pytest
from freezegun import freeze_time

from ledger import ContextLedger, LedgerCorrupted
from ledger._store.application import SNAPSHOT_INTERVAL
from ledger._store.serialization import MsgpackTranscoder
from tests.helpers import run
from tests.tampering import (
    delete_event,
    edit_event,
    execute_sql,
    latest_snapshot,
    store_snapshot,
    stream_key,
    swap_versions,
)

START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def _history(url: str, user: str, events: int) -> None:
    """About ``events`` events of every kind for ``user``."""
    with ContextLedger.open(url) as ledger, freeze_time(START) as clock:
        while len(ledger.history(user)) < events:
            context = ledger.open_context(user, "t1", run_id="r1", ttl_seconds=30)
            ledger.open_context(user, "t1", metadata={"turn": 1})
            ledger.update_context(user, context.context_id, metadata={"n": 2})
            ledger.open_context(user, "t2")
            clock.tick(31)
            ledger.expire_due()
            ledger.clear_user(user)
            clock.tick(1)


@pytest.fixture
def url(durable_url: str) -> str:
    _history(durable_url, "alice", 12)
    _history(durable_url, "bob", 12)
    return durable_url


def _report(url: str, user: str | None = None) -> tuple[str, int, str]:
    with ContextLedger.open(url) as ledger:
        report = ledger.verify_chain(user)
    assert len(report.broken) == 1, report.broken
    broken = report.broken[0]
    assert broken.fault is not None
    others = [u for u in report.users if u.user_id != broken.user_id]
    assert all(u.holds and u.events == u.head_version for u in others)
    return broken.user_id, broken.fault.version, broken.fault.fault


def test_an_untouched_ledger_holds_and_names_each_head(url: str) -> None:
    with ContextLedger.open(url) as ledger:
        report = ledger.verify_chain()
        alice = ledger.verify_chain("alice")
        history = ledger.history("alice")

    assert report.holds
    assert [u.user_id for u in report.users] == ["alice", "bob"]
    assert report.users[0] == alice.users[0]
    assert alice.users[0].head_version == history[-1].version == len(history)
    assert alice.events == len(history)


def test_an_altered_event_is_named(url: str) -> None:
    edit_event(url, "alice", 3, metadata={"turn": 99})

    assert _report(url) == ("alice", 3, "altered")
    assert _report(url, "alice") == ("alice", 3, "altered")


def test_an_event_that_no_longer_decodes_is_altered(url: str) -> None:
    execute_sql(
        url,
        "UPDATE {events} SET state = {c1} WHERE originator_id = {p} "
        "AND originator_version = 5",
        (stream_key(url, "bob"),),
    )

    assert _report(url) == ("bob", 5, "altered")


def test_an_altered_prev_hash_is_named_at_its_own_version(url: str) -> None:
    edit_event(url, "alice", 4, prev_hash="f" * 64)

    assert _report(url) == ("alice", 4, "altered")


def test_an_event_moved_to_another_users_stream_is_altered(url: str) -> None:
    edit_event(url, "alice", 2, user_id="bob")

    assert _report(url)[1:] == (2, "altered")


def test_a_deleted_event_is_missing(url: str) -> None:
    delete_event(url, "bob", 6)

    assert _report(url) == ("bob", 6, "missing")
    assert _report(url, "bob") == ("bob", 6, "missing")


def test_a_deleted_first_event_is_missing(url: str) -> None:
    delete_event(url, "alice", 1)

    assert _report(url) == ("alice", 1, "missing")


def test_swapped_versions_are_reordered(url: str) -> None:
    swap_versions(url, "alice", 3, 4)

    assert _report(url) == ("alice", 3, "reordered")
    assert _report(url, "alice") == ("alice", 3, "reordered")


def test_swapped_contents_are_reordered(url: str) -> None:
    key = stream_key(url, "bob")
    rows = execute_sql(
        url,
        "SELECT topic, state FROM {events} WHERE originator_id = {p} "
        "AND originator_version IN (3, 4) ORDER BY originator_version",
        (key,),
    )
    for version, (topic, state) in zip((4, 3), rows, strict=True):
        execute_sql(
            url,
            "UPDATE {events} SET topic = {p}, state = {p} WHERE originator_id = {p} "
            "AND originator_version = {p}",
            (topic, bytes(state), key, version),
        )

    assert _report(url) == ("bob", 3, "reordered")


def test_events_swapped_in_the_log_are_reordered(url: str) -> None:
    key = stream_key(url, "alice")
    positions = execute_sql(
        url,
        "SELECT {log} FROM {events} WHERE originator_id = {p} "
        "ORDER BY originator_version",
        (key,),
    )
    second, third = positions[1][0], positions[2][0]
    for old, new in ((second, -5), (third, second), (-5, third)):
        execute_sql(
            url, "UPDATE {events} SET {log} = {p} WHERE {log} = {p}", (new, old)
        )

    user, _, fault = _report(url)

    assert (user, fault) == ("alice", "reordered")


def test_deleting_the_newest_events_shows_against_a_newer_snapshot(
    durable_url: str,
) -> None:
    _history(durable_url, "carol", SNAPSHOT_INTERVAL + 5)
    with ContextLedger.open(durable_url) as ledger:
        head = ledger.verify_chain("carol").users[0].head_version
    snapshots = execute_sql(
        durable_url,
        "SELECT MAX(originator_version) FROM {snapshots} WHERE originator_id = {p}",
        (stream_key(durable_url, "carol"),),
    )
    newest_snapshot = snapshots[0][0]
    assert newest_snapshot is not None
    execute_sql(
        durable_url,
        "DELETE FROM {events} WHERE originator_id = {p} AND originator_version >= {p}",
        (stream_key(durable_url, "carol"), newest_snapshot - 1),
    )

    assert head >= newest_snapshot
    assert _report(durable_url, "carol") == ("carol", newest_snapshot - 1, "missing")


def test_an_altered_snapshot_is_reported(durable_url: str) -> None:
    _history(durable_url, "dan", SNAPSHOT_INTERVAL + 5)
    key = stream_key(durable_url, "dan")
    execute_sql(
        durable_url,
        "UPDATE {snapshots} SET state = {c1} WHERE originator_id = {p}",
        (key,),
    )

    user, _, fault = _report(durable_url)

    assert (user, fault) == ("dan", "altered")


def test_verify_chain_cli_exits_1_naming_user_version_and_fault(
    url: str, tmp_path: Path
) -> None:
    clean = run("--db", url, "verify", "--chain", cwd=tmp_path)
    delete_event(url, "bob", 7)
    broken = run("--db", url, "verify", "--chain", cwd=tmp_path)
    one = run("--db", url, "verify", "--chain", "--user", "alice", cwd=tmp_path)

    assert clean.returncode == 0, clean.stderr
    assert "chain holds (users: 2" in clean.stdout
    assert broken.returncode == 1
    assert "BROKEN user bob: version 7: missing" in broken.stdout
    assert "alice" not in broken.stdout
    assert one.returncode == 0
    assert "user alice:" in one.stdout
    assert "head hash" in one.stdout


def test_verify_chain_json_lists_every_user(url: str, tmp_path: Path) -> None:
    swap_versions(url, "alice", 5, 6)

    result = run("--db", url, "verify", "--chain", "--json", cwd=tmp_path)

    assert result.returncode == 1

    listed = {u["user_id"]: u for u in json.loads(result.stdout)}
    assert listed["alice"]["fault"]["fault"] == "reordered"
    assert listed["alice"]["fault"]["version"] == 5
    assert listed["bob"]["fault"] is None


@pytest.mark.parametrize("field", ["timestamp", "contexts"])
def test_an_edited_snapshot_is_altered_and_not_used(
    durable_url: str, field: str
) -> None:
    _history(durable_url, "erin", SNAPSHOT_INTERVAL + 5)
    with ContextLedger.open(durable_url) as ledger:
        before = ledger.history("erin", since=START)
    version, state = latest_snapshot(durable_url, "erin")
    if field == "timestamp":
        state["timestamp"] = START
    else:
        contexts = state["contexts"]
        assert isinstance(contexts, list)
        state["contexts"] = [{**c, "metadata": {"forged": True}} for c in contexts]
    store_snapshot(durable_url, "erin", version, state)

    with ContextLedger.open(durable_url) as ledger:
        after = ledger.history("erin", since=START)

    assert _report(durable_url) == ("erin", version, "altered")
    assert _report(durable_url, "erin") == ("erin", version, "altered")
    assert after == before


def test_a_user_with_only_snapshots_left_is_missing_everything(
    durable_url: str,
) -> None:
    _history(durable_url, "fay", SNAPSHOT_INTERVAL + 5)
    _history(durable_url, "gus", 5)
    execute_sql(
        durable_url,
        "DELETE FROM {events} WHERE originator_id = {p}",
        (stream_key(durable_url, "fay"),),
    )

    with ContextLedger.open(durable_url) as ledger:
        report = ledger.verify_chain()

    (broken,) = report.broken
    assert broken.fault is not None
    assert (broken.fault.version, broken.fault.fault) == (1, "missing")
    assert [u.holds for u in report.users].count(True) == 1


def test_a_time_stored_where_text_belongs_is_altered(url: str) -> None:
    with ContextLedger.open(url) as ledger:
        cleared = [e for e in ledger.history("bob") if e.kind == "cleared"]
    edit_event(url, "bob", cleared[0].version, reason=START)

    assert _report(url)[1:] == (cleared[0].version, "altered")


def test_reading_a_corrupted_stream_raises_a_typed_error(
    url: str, tmp_path: Path
) -> None:
    execute_sql(
        url,
        "UPDATE {events} SET state = {c1} WHERE originator_id = {p} "
        "AND originator_version = 2",
        (stream_key(url, "alice"),),
    )

    with ContextLedger.open(url) as ledger:
        for call in (
            lambda: ledger.history("alice"),
            lambda: ledger.contexts_as_of("alice", START),
            lambda: ledger.active_contexts("alice"),
        ):
            with pytest.raises(LedgerCorrupted, match="verify --chain --user alice"):
                call()
        assert ledger.history("bob")
    result = run("--db", url, "history", "alice", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("LedgerCorrupted: ")


def test_every_backend_verifies_an_untouched_ledger(ledger: ContextLedger) -> None:
    with freeze_time(START):
        for turn in range(SNAPSHOT_INTERVAL + 3):
            ledger.open_context("hal", f"t{turn % 2}", metadata={"n": turn * 0.5})
        ledger.clear_user("hal")

    report = ledger.verify_chain()

    assert report.holds
    assert report.events == SNAPSHOT_INTERVAL + 5


@pytest.mark.parametrize(
    "change",
    [
        {"thread_id": "elsewhere"},  # the context belongs to another thread
        {"timestamp": msgpack.ExtType(1, b"\x00\x01\x02")},  # a time of 3 bytes
    ],
)
def test_an_event_that_cannot_be_replayed_is_a_typed_error(
    url: str, change: dict[str, object]
) -> None:
    cleared = 6  # alice's first clear_user, in _history
    edit_event(url, "alice", cleared, **change)

    with ContextLedger.open(url) as ledger, pytest.raises(LedgerCorrupted):
        ledger.active_contexts("alice")
    assert _report(url)[1:] == (cleared, "altered")


def test_a_snapshot_with_an_edited_request_window_is_altered(durable_url: str) -> None:
    with ContextLedger.open(durable_url) as ledger:
        for n in range(SNAPSHOT_INTERVAL + 2):
            ledger.open_context("erin", "t", request_id=f"req-{n}")
    key = stream_key(durable_url, "erin")
    (state,) = execute_sql(
        durable_url, "SELECT state FROM {snapshots} WHERE originator_id = {p}", (key,)
    )[0]
    transcoder = MsgpackTranscoder()
    snapshot = transcoder.decode(bytes(state))
    snapshot["requests"][0][0] = "forged"
    execute_sql(
        durable_url,
        "UPDATE {snapshots} SET state = {p} WHERE originator_id = {p}",
        (transcoder.encode(snapshot), key),
    )

    with ContextLedger.open(durable_url) as ledger:
        report = ledger.verify_chain("erin")

    assert not report.holds
    fault = report.users[0].fault
    assert fault is not None
    assert (fault.version, fault.fault) == (SNAPSHOT_INTERVAL, "altered")
