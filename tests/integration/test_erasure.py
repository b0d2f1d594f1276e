"""Erasure by crypto-shredding (``forget_user`` and ``ctxledger forget``): the personal
data is gone from every reader, file and dump, exports made before still verify, and a
damaged user is still erased. On SQLite and PostgreSQL (and memory where no file is
involved). Retention and the master key have files of their own."""

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import pytest

from ledger import (
    ContextLedger,
    InvalidContextInput,
    LedgerCorrupted,
    verify_export,
)
from ledger._audit.export import FORMATS
from ledger._domain.contexts import user_aggregate_id
from ledger._domain.events import ContextCreated
from ledger._domain.hashing import chain_hash, record_hash
from ledger._store.application import SNAPSHOT_INTERVAL
from projections import Projections
from tests.helpers import OpenLedger, cli_on, dsn_and_schema
from tests.tampering import (
    append_raw_event,
    execute_sql,
    store_event,
    stored_event,
    stream_key,
)

SECRET = "erase-me-4f1c9b"
"""A metadata value that must never be found in the database's files."""
KEY_MASTER = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"


def _busy_user(ledger: ContextLedger, user: str = "alice") -> str:
    """A user with more than a snapshot's worth of events, the secret in each
    kind of event, and two threads; returns the first context's id."""
    first = ledger.open_context(user, "t1", metadata={"name": SECRET}, ttl_seconds=3600)
    for n in range(SNAPSHOT_INTERVAL + 5):
        ledger.open_context(user, "t1", metadata={"n": n, "note": f"{SECRET}-{n}"})
    ledger.update_context(user, first.context_id, metadata={"email": SECRET})
    ledger.open_context(user, "t2", metadata={"address": SECRET})
    return first.context_id


def _metadata(ledger: ContextLedger, user: str) -> dict[str, object]:
    context = ledger.get_context(user, "t1")
    assert context is not None
    return context.metadata


def _shows_secret(value: object) -> bool:
    return SECRET in json.dumps(value, default=str)


def test_forget_user_erases_metadata_everywhere_and_the_chain_holds(
    open_ledger: OpenLedger,
) -> None:
    ledger = open_ledger()
    context_id = _busy_user(ledger)
    ledger.open_context("bob", "t1", metadata={"keep": "bob's"})
    before_forget = datetime.now(tz=UTC)
    events_before = len(ledger.history("alice"))
    assert _shows_secret([e.model_dump() for e in ledger.history("alice")])

    erased = ledger.forget_user("alice", reason="ticket 42")

    assert erased == events_before  # every event carries metadata
    history = ledger.history("alice")
    assert len(history) == events_before + 1
    assert not _shows_secret([e.model_dump() for e in history])
    assert all(e.erased and e.details["metadata"] is None for e in history[:-1])
    assert history[-1].kind == "forgotten"
    assert history[-1].details["reason"] == "ticket 42"
    assert not _shows_secret(
        [e.model_dump() for e in ledger.context_history("alice", context_id)]
    )
    then = ledger.contexts_as_of("alice", before_forget)
    assert [c.erased for c in then] == [True, True]
    assert all(c.metadata == {} for c in then)
    assert ledger.active_contexts("alice") == []
    assert ledger.get_context("alice", "t1") is None
    report = ledger.verify_chain()
    assert report.holds, report
    assert ledger.verify_chain("alice").holds
    # The others are untouched.
    assert _metadata(ledger, "bob") == {"keep": "bob's"}


def test_forget_user_is_idempotent_and_new_activity_uses_a_new_key(
    open_ledger: OpenLedger,
) -> None:
    ledger = open_ledger()
    ledger.open_context("alice", "t1", metadata={"name": SECRET})
    assert ledger.forget_user("alice") == 1
    version = len(ledger.history("alice"))

    assert ledger.forget_user("alice") == 0
    assert len(ledger.history("alice")) == version  # nothing appended

    fresh = ledger.open_context("alice", "t1", metadata={"name": "new"})
    assert fresh.reuse_count == 0
    assert fresh.metadata == {"name": "new"}
    assert ledger.history("alice")[-1].details["metadata"] == {"name": "new"}
    # A second erasure erases the new key's events only.
    assert ledger.forget_user("alice") == 1
    assert ledger.verify_chain().holds
    # A user with no events: nothing to erase, nothing appended.
    assert ledger.forget_user("nobody") == 0
    assert ledger.history("nobody") == []


@pytest.mark.parametrize("bad", ["", "a\x00b", "\ud800", 7, None])
def test_forget_user_refuses_bad_ids_and_reasons(
    open_ledger: OpenLedger, bad: object
) -> None:
    ledger = open_ledger()
    ledger.open_context("alice", "t1", metadata={"name": SECRET})
    with pytest.raises(InvalidContextInput):
        ledger.forget_user(bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidContextInput):
        ledger.forget_user("alice", reason=bad)  # type: ignore[arg-type]
    assert not ledger.history("alice")[-1].erased
    assert len(ledger.history("alice")) == 1


def test_exports_written_before_the_erasure_still_verify(
    open_ledger: OpenLedger, tmp_path: Path
) -> None:
    ledger = open_ledger()
    _busy_user(ledger)
    before = tmp_path / "before.jsonl"
    ledger.export("alice", before)
    assert SECRET.encode() in before.read_bytes()

    ledger.forget_user("alice")
    after = tmp_path / "after.jsonl"
    manifest = ledger.export("alice", after)

    assert verify_export(before).intact
    report = verify_export(after)
    assert report.intact, report.fault
    assert SECRET.encode() not in after.read_bytes()
    assert report.manifest is not None
    assert report.manifest.format == FORMATS[-1]
    # The events both files share hash alike: the chain covers the commitment.
    lines_before = before.read_bytes().splitlines()[:-1]
    lines_after = after.read_bytes().splitlines()[: len(lines_before)]
    assert [chain_hash(json.loads(line)) for line in lines_before] == [
        chain_hash(json.loads(line)) for line in lines_after
    ]
    assert manifest.count == len(lines_before) + 1


def test_an_export_whose_metadata_was_changed_does_not_verify(
    open_ledger: OpenLedger, tmp_path: Path
) -> None:
    ledger = open_ledger()
    ledger.open_context("alice", "t1", metadata={"name": SECRET})
    ledger.open_context("alice", "t1", metadata={"n": 1})
    path = tmp_path / "export.jsonl"
    ledger.export("alice", path)
    lines = path.read_bytes().split(b"\n")
    lines[0] = lines[0].replace(SECRET.encode(), b"someone-else")
    path.write_bytes(b"\n".join(lines))

    report = verify_export(path)

    assert report.fault is not None
    assert report.fault.line == 1
    assert "metadata_commitment" in report.fault.detail


def test_a_format_1_export_still_verifies(
    open_ledger: OpenLedger, tmp_path: Path
) -> None:
    """Exports of the release before sealing: ctxledger-export/1, no commitments."""
    ledger = open_ledger()
    ledger.open_context("alice", "t1", metadata={"name": "x"})
    path = tmp_path / "export.jsonl"
    ledger.export("alice", path)
    *events, manifest_line = path.read_bytes().splitlines()
    records = [json.loads(line) for line in events]
    # Rewrite it as release 1 wrote it: plain metadata, the line hash chained.
    for record in records:
        for key in ("metadata_commitment", "metadata_salt"):
            record["details"].pop(key)
    manifest = json.loads(manifest_line)["manifest"]
    manifest["format"] = "ctxledger-export/1"
    manifest["head_hash"] = record_hash(records[-1])
    manifest.pop("digest")
    manifest["digest"] = record_hash(manifest)
    encode = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    path.write_bytes(
        b"".join(
            encode.encode(r).encode() + b"\n"
            for r in [*records, {"manifest": manifest}]
        )
    )

    report = verify_export(path)

    assert report.intact, report.fault
    assert report.manifest is not None
    assert report.manifest.format == "ctxledger-export/1"


def test_events_stored_before_sealing_still_replay_and_verify(
    durable_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Format 1 events (plain metadata, no commitment), then format 2 ones."""
    append_raw_event(
        durable_url,
        "alice",
        ContextCreated,
        thread_id="t1",
        metadata={"old": "plain"},
        ttl_seconds=None,
    )
    with ContextLedger.open(durable_url) as ledger:
        reused = ledger.open_context("alice", "t1", metadata={"new": "sealed"})
        assert reused.reuse_count == 1
        assert reused.metadata == {"old": "plain", "new": "sealed"}
        history = ledger.history("alice")
        assert "metadata_commitment" not in history[0].details
        assert "metadata_commitment" in history[1].details
        assert ledger.verify_chain().holds
        # Erasure erases what was sealed; the plain event keeps its value, and
        # the log says so.
        assert ledger.forget_user("alice") == 1
        assert "1 event(s) written before sealing" in caplog.text
        history = ledger.history("alice")
        assert history[0].details["metadata"] == {"old": "plain"}
        assert history[1].erased
        assert ledger.verify_chain().holds


def test_views_show_erased_data_and_keep_their_figures(durable_url: str) -> None:
    with (
        ContextLedger.open(durable_url) as ledger,
        Projections.open(durable_url) as views,
    ):
        _busy_user(ledger)
        ledger.open_context("bob", "t1", metadata={"keep": "bob's"})
        views.catch_up()
        assert _shows_secret([r.details for r in views.audit_rows(user_id="alice")])
        assert _shows_secret([c.metadata for c in views.active_contexts("alice")])
        figures = views.continuity("alice")

        ledger.forget_user("alice")
        # Before the views apply the erasure, they already cannot open it.
        assert not _shows_secret([c.metadata for c in views.active_contexts("alice")])
        assert all(c.erased for c in views.active_contexts("alice"))
        views.catch_up()

        rows = views.audit_rows(user_id="alice")
        assert not _shows_secret([r.details for r in rows])
        assert all(r.details.get("erased") for r in rows[:-1])
        assert rows[-1].kind == "forgotten"
        assert views.active_contexts("alice") == []
        assert views.continuity("alice") == figures
        assert views.active_contexts("bob")[0].metadata == {"keep": "bob's"}
        assert views.verify() == {"active": [], "audit": [], "continuity": []}
        views.rebuild()
        assert views.verify() == {"active": [], "audit": [], "continuity": []}
        assert not _shows_secret([r.details for r in views.audit_rows(user_id="alice")])


def _sqlite_files(url: str) -> list[Path]:
    path = Path(url.removeprefix("sqlite:///"))
    return [p for p in path.parent.iterdir() if p.name.startswith(path.name)]


def _files_hold(url: str, needle: bytes) -> list[str]:
    return [p.name for p in _sqlite_files(url) if needle in p.read_bytes()]


def test_no_sqlite_file_holds_a_metadata_value_or_a_destroyed_key(
    sqlite_url: str,
) -> None:
    with (
        ContextLedger.open(sqlite_url) as ledger,
        Projections.open(sqlite_url) as views,
    ):
        _busy_user(ledger)
        views.catch_up()
        # While open (the WAL holds recent pages) and with views and snapshots.
        assert _files_hold(sqlite_url, SECRET.encode()) == []
        stream = user_aggregate_id("alice").hex
        key = execute_sql(
            sqlite_url,
            "SELECT data_key FROM ctxledger_keys WHERE stream_id = {p}",
            (stream,),
        )[0][0]
        assert len(key) == 32
        assert _files_hold(sqlite_url, bytes(key)) != []

        ledger.forget_user("alice")
        views.catch_up()

        assert _files_hold(sqlite_url, SECRET.encode()) == []
        assert _files_hold(sqlite_url, bytes(key)) == []  # secure_delete
    assert _files_hold(sqlite_url, SECRET.encode()) == []
    assert _files_hold(sqlite_url, bytes(key)) == []


def _pg_dump(url: str) -> bytes:
    program = shutil.which("pg_dump")
    if program is None:
        message = "pg_dump not installed: apt-get install postgresql-client"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    dsn, schema = dsn_and_schema(url)
    done = subprocess.run(
        [program, "--dbname", dsn, "--schema", schema, "--data-only"],
        capture_output=True,
        check=True,
        timeout=120,
    )
    return done.stdout


@pytest.mark.postgres
def test_a_postgres_dump_holds_no_metadata_value(postgres_url: str) -> None:
    with (
        ContextLedger.open(postgres_url, master_key=KEY_MASTER) as ledger,
        Projections.open(postgres_url, master_key=KEY_MASTER) as views,
    ):
        _busy_user(ledger)
        views.catch_up()
        dump = _pg_dump(postgres_url)
        assert b"ctxledger_events" in dump  # it is the ledger's data
        assert SECRET.encode() not in dump
        wrapped = execute_sql(
            postgres_url, "SELECT wrapped FROM ctxledger_keys WHERE stream_id <> ''"
        )
        assert [row[0] for row in wrapped] == [1]

        ledger.forget_user("alice")
        views.catch_up()

        dump = _pg_dump(postgres_url)
        assert SECRET.encode() not in dump
        # A tombstone is all that is left of alice's key: the master key's tag
        # over its place (16 bytes, with its 12-byte nonce), no key.
        ((tag, destroyed),) = execute_sql(
            postgres_url,
            "SELECT data_key, destroyed FROM ctxledger_keys WHERE stream_id <> ''",
        )
        assert destroyed == 1
        assert len(bytes(tag)) == 28


_CACHED_WRITER = r"""
import json, sys
from ledger import ContextLedger
ledger = ContextLedger.open(sys.argv[1])
first = ledger.open_context("alice", "t1", metadata={"name": sys.argv[2]})
print("cached", flush=True)
sys.stdin.readline()  # another process forgets alice meanwhile
again = ledger.open_context("alice", "t1", metadata={"after": "yes"})
print(json.dumps({
    "first": first.context_id,
    "again": again.context_id,
    "reuse_count": again.reuse_count,
    "metadata": again.metadata,
    "history": [e.model_dump(mode="json") for e in ledger.history("alice")],
}), flush=True)
ledger.close()
"""


def test_a_process_that_cached_the_user_does_not_resurrect_it(
    durable_url: str,
) -> None:
    with subprocess.Popen(
        [sys.executable, "-c", _CACHED_WRITER, durable_url, SECRET],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    ) as writer:
        assert writer.stdout is not None
        assert writer.stdin is not None
        assert writer.stdout.readline().strip() == "cached"
        with ContextLedger.open(durable_url) as ledger:
            assert ledger.forget_user("alice") == 1
        writer.stdin.write("go\n")
        writer.stdin.flush()
        result = json.loads(writer.stdout.readline())
        assert writer.wait(timeout=60) == 0

    # Its cached context ended with the erasure: a new one, nothing carried over.
    assert result["again"] != result["first"]
    assert result["reuse_count"] == 0
    assert result["metadata"] == {"after": "yes"}
    assert SECRET not in json.dumps(result["history"])
    kinds = [event["kind"] for event in result["history"]]
    assert kinds == ["created", "forgotten", "created"]
    with ContextLedger.open(durable_url) as ledger:
        assert ledger.verify_chain().holds
        assert not _shows_secret([e.model_dump() for e in ledger.history("alice")])
        # The new context's key is a new generation, readable.
        assert ledger.history("alice")[-1].details["metadata"] == {"after": "yes"}


def test_cli_forget_asks_then_erases(durable_url: str) -> None:
    with ContextLedger.open(durable_url) as ledger:
        ledger.open_context("alice", "t1", metadata={"name": SECRET})
        ledger.open_context("bob", "t1", metadata={"name": "bob"})

    refused = cli_on("forget", "alice", url=durable_url, stdin="n\n")
    assert refused.returncode == 1, refused
    no_answer = cli_on("forget", "alice", url=durable_url)
    assert no_answer.returncode == 1, no_answer
    with ContextLedger.open(durable_url) as ledger:
        assert not ledger.history("alice")[-1].erased

    done = cli_on("forget", "alice", "--reason", "ticket 7", "--yes", url=durable_url)
    assert done.returncode == 0, done.stderr
    assert "forgot alice: the personal data of 1 event(s) is erased" in done.stdout
    again = cli_on("forget", "alice", "--yes", url=durable_url)
    assert again.returncode == 0
    assert "no readable personal data" in again.stdout
    shown = cli_on("history", "alice", "--json", url=durable_url)
    assert SECRET not in shown.stdout
    assert json.loads(shown.stdout)[-1]["details"]["reason"] == "ticket 7"


@pytest.mark.parametrize(
    "args",
    [
        ("forget",),
        ("forget", "alice", "--inactive-since", "2026-01-01T00:00:00Z"),
        ("forget", "--inactive-since", "not a time"),
    ],
)
def test_cli_forget_usage_errors(sqlite_url: str, args: tuple[str, ...]) -> None:
    with ContextLedger.open(sqlite_url) as ledger:
        ledger.open_context("alice", "t1", metadata={"name": SECRET})
    result = cli_on(*args, "--yes", url=sqlite_url)
    assert result.returncode == 2, result
    with ContextLedger.open(sqlite_url) as ledger:
        assert not ledger.history("alice")[-1].erased


def test_cli_forget_without_a_ledger_creates_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'none.db'}"
    result = cli_on("forget", "alice", "--yes", url=url)
    assert result.returncode == 1
    assert "LedgerNotFound" in result.stderr
    assert not (tmp_path / "none.db").exists()


def test_a_ledger_that_only_read_the_user_does_not_bring_the_key_back(
    durable_url: str,
) -> None:
    """A second ledger (its own caches, as another process) read alice before the
    erasure; its next write must not create the destroyed key again."""
    with (
        ContextLedger.open(durable_url) as eraser,
        ContextLedger.open(durable_url) as reader,
    ):
        eraser.open_context("alice", "t1", metadata={"name": SECRET})
        assert _metadata(reader, "alice") == {"name": SECRET}  # cached, read only
        eraser.forget_user("alice")

        again = reader.open_context("alice", "t1", metadata={"after": 1})
        reader.expire_due()

        assert again.reuse_count == 0
        for ledger in (eraser, reader):
            history = ledger.history("alice")
            assert [e.kind for e in history] == ["created", "forgotten", "created"]
            assert history[0].erased
            assert history[-1].details["metadata"] == {"after": 1}
            assert ledger.verify_chain().holds
    rows = execute_sql(
        durable_url,
        "SELECT generation, destroyed FROM ctxledger_keys WHERE stream_id <> '' "
        "ORDER BY generation",
    )
    assert rows == [(0, 1), (1, 0)]


def _forged(state: dict[str, object]) -> dict[str, object]:
    forged = {k: v for k, v in state.items() if k != "sealed"}
    forged["metadata"] = {"name": "FORGED"}
    forged["metadata_salt"] = b"\x00" * 32
    return forged


def _flipped(state: dict[str, object]) -> dict[str, object]:
    sealed = bytearray(cast(bytes, state["sealed"]))
    sealed[-1] ^= 1
    return {**state, "sealed": bytes(sealed)}


def _other_generation(state: dict[str, object]) -> dict[str, object]:
    return {**state, "key_generation": 7}


@pytest.mark.parametrize("tamper", [_forged, _flipped, _other_generation])
def test_verify_chain_finds_altered_sealed_metadata(
    durable_url: str, tamper: Callable[[dict[str, object]], dict[str, object]]
) -> None:
    with ContextLedger.open(durable_url) as ledger:
        for n in range(3):
            ledger.open_context("alice", "t1", metadata={"n": n, "name": SECRET})
        ledger.open_context("bob", "t1", metadata={"name": "bob"})
    store_event(durable_url, "alice", 2, tamper(stored_event(durable_url, "alice", 2)))

    with ContextLedger.open(durable_url) as ledger:
        report = ledger.verify_chain()
        assert [u.user_id for u in report.broken] == ["alice"]
        assert report.broken[0].fault is not None
        assert report.broken[0].fault.version == 2
        assert report.broken[0].fault.fault == "altered"
        assert not ledger.verify_chain("alice").holds
        if tamper is _forged:  # read as stored, as any altered field is
            assert ledger.history("alice")[1].details["metadata"] == {"name": "FORGED"}
        else:  # a value that does not open, or no key: damage
            with pytest.raises(LedgerCorrupted):
                ledger.history("alice")
        assert ledger.verify_chain("bob").holds


def test_a_damaged_user_is_still_erased(durable_url: str) -> None:
    with ContextLedger.open(durable_url) as ledger:
        for n in range(SNAPSHOT_INTERVAL + 5):
            ledger.open_context("alice", "t1", metadata={"n": n, "name": SECRET})
    execute_sql(
        durable_url,
        "UPDATE {events} SET state = {c1} WHERE originator_id = {p} "
        "AND originator_version = {p}",
        (stream_key(durable_url, "alice"), SNAPSHOT_INTERVAL + 3),
    )
    with ContextLedger.open(durable_url) as ledger:
        with pytest.raises(LedgerCorrupted) as raised:
            ledger.forget_user("alice")
        assert "destroyed all of the user's data keys" in str(raised.value.__notes__)
        live = execute_sql(
            durable_url,
            "SELECT generation FROM ctxledger_keys WHERE stream_id <> '' "
            "AND destroyed = 0",
        )
        assert live == []
        # What still decodes shows as erased, never the old values.
        app = ledger._app
        readable = app.events_between_versions("alice", 1, SNAPSHOT_INTERVAL)
        assert all(getattr(event, "erased") for event in readable)  # noqa: B009


def test_cli_forget_on_a_store_of_the_previous_release(sqlite_url: str) -> None:
    """No keys table, metadata stored in plain form (format 1)."""
    append_raw_event(
        sqlite_url,
        "alice",
        ContextCreated,
        thread_id="t1",
        metadata={"old": "plain"},
        ttl_seconds=None,
    )
    execute_sql(sqlite_url, "DROP TABLE ctxledger_keys")

    result = cli_on("forget", "alice", "--yes", url=sqlite_url)

    assert result.returncode == 0, result.stderr
    assert "written before sealing" in result.stderr
    with ContextLedger.open(sqlite_url) as ledger:
        assert [e.kind for e in ledger.history("alice")] == ["created", "forgotten"]
        assert ledger.verify_chain().holds


def test_cli_forget_of_a_user_with_no_events_says_so(sqlite_url: str) -> None:
    with ContextLedger.open(sqlite_url) as ledger:
        ledger.open_context("alice", "t1", metadata={"name": SECRET})
    result = cli_on("forget", "alcie", "--yes", url=sqlite_url)
    assert result.returncode == 0
    assert "user 'alcie' has no events" in result.stderr
    assert result.stdout == ""
    empty_reason = cli_on(
        "forget",
        "--inactive-since",
        "2999-01-01",
        "--reason",
        "",
        "--yes",
        url=sqlite_url,
    )
    assert empty_reason.returncode == 1
    assert "InvalidContextInput" in empty_reason.stderr
    with ContextLedger.open(sqlite_url) as ledger:
        assert not ledger.history("alice")[-1].erased


@pytest.mark.postgres
def test_views_read_keys_on_their_own_connection(postgres_url: str) -> None:
    """A view's transaction looks keys up on its own connection: a pool of one is
    enough (a second pooled connection per read would starve the pool)."""
    url = f"{postgres_url}&pool_size=1&max_overflow=0&pool_timeout=2"
    with ContextLedger.open(url) as ledger, Projections.open(url) as views:
        for n in range(5):
            ledger.open_context(f"user-{n}", "t1", metadata={"n": n})
        views.catch_up()
        assert len(views.active_contexts()) == 5
        assert [r.details["metadata"] for r in views.audit_rows("user-1")] == [{"n": 1}]
        # (verify reads the ledger beside a view transaction: it needs two.)


def test_a_user_erased_while_damaged_writes_again_once_forgotten_again(
    durable_url: str,
) -> None:
    with ContextLedger.open(durable_url) as ledger:
        ledger.open_context("alice", "t1", metadata={"name": SECRET})
        ledger.open_context("alice", "t1", metadata={"n": 1})
    good = stored_event(durable_url, "alice", 2)
    store_event(durable_url, "alice", 2, {**good, "format": 99})  # unreadable
    with ContextLedger.open(durable_url) as ledger, pytest.raises(LedgerCorrupted):
        ledger.forget_user("alice")
    store_event(durable_url, "alice", 2, good)  # repaired
    with ContextLedger.open(durable_url) as ledger:
        with pytest.raises(LedgerCorrupted, match="run forget_user again"):
            ledger.open_context("alice", "t1", metadata={"n": 2})
        assert ledger.forget_user("alice") == 0  # erased already: records it
        fresh = ledger.open_context("alice", "t1", metadata={"n": 3})
        assert fresh.reuse_count == 0
        assert ledger.verify_chain().holds


def test_a_key_generation_that_is_not_a_number_is_damage(durable_url: str) -> None:
    with ContextLedger.open(durable_url) as ledger:
        ledger.open_context("alice", "t1", metadata={"name": SECRET})
        ledger.open_context("bob", "t1", metadata={"name": "bob"})
    state = stored_event(durable_url, "alice", 1)
    store_event(durable_url, "alice", 1, {**state, "key_generation": "x"})
    with ContextLedger.open(durable_url) as ledger:
        with pytest.raises(LedgerCorrupted):
            ledger.get_context("alice", "t1")
        broken = ledger.verify_chain().broken
        assert len(broken) == 1
        assert broken[0].fault is not None
        assert broken[0].fault.version == 1
        assert _metadata(ledger, "bob") == {"name": "bob"}


def _export_lines(ledger: ContextLedger, path: Path) -> list[dict[str, object]]:
    ledger.export("alice", path)
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def _rewrite(path: Path, records: list[dict[str, object]]) -> None:
    encode = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    path.write_bytes(b"".join(encode.encode(r).encode() + b"\n" for r in records))


@pytest.mark.parametrize("change", ["null commitment", "spaced salt", "format 1"])
def test_verify_export_refuses_lenient_readings(
    open_ledger: OpenLedger, tmp_path: Path, change: str
) -> None:
    ledger = open_ledger()
    ledger.open_context("alice", "t1", metadata={"name": SECRET})
    path = tmp_path / "export.jsonl"
    records = _export_lines(ledger, path)
    details = cast(dict[str, object], records[0]["details"])
    manifest = cast(dict[str, object], records[-1]["manifest"])
    if change == "null commitment":
        details["metadata_commitment"] = None
    elif change == "spaced salt":
        salt = cast(str, details["metadata_salt"])
        details["metadata_salt"] = f"{salt[:2]} {salt[2:]}"
    else:
        manifest["format"] = "ctxledger-export/1"
        manifest.pop("digest")
        manifest["digest"] = record_hash(manifest)
    _rewrite(path, records)

    report = verify_export(path)

    assert report.fault is not None, change


def test_a_generation_of_the_wrong_type_does_not_stop_the_erasure(
    durable_url: str,
) -> None:
    with ContextLedger.open(durable_url) as ledger:
        ledger.open_context("alice", "t1", metadata={"name": SECRET})
        ledger.open_context("alice", "t1", metadata={"n": 1})
    state = stored_event(durable_url, "alice", 2)
    store_event(durable_url, "alice", 2, {**state, "key_generation": [0]})
    with ContextLedger.open(durable_url) as ledger, pytest.raises(LedgerCorrupted):
        ledger.forget_user("alice")
    live = execute_sql(
        durable_url,
        "SELECT generation FROM ctxledger_keys WHERE stream_id <> '' AND destroyed = 0",
    )
    assert live == []
