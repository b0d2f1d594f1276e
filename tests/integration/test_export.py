"""Exports: a round trip through the file, and every kind of change to it found."""

import json
import stat
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from freezegun import freeze_time
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import ContextLedger, InvalidContextInput, verify_export
from ledger._domain.hashing import canonical_encoding, chain_hash, record_hash
from tests.helpers import CTXLEDGER, run

T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


def _history(ledger: ContextLedger) -> None:
    with freeze_time(T0) as clock:
        first = ledger.open_context("alice", "t1", run_id="r1", ttl_seconds=40)
        ledger.open_context("bob", "t1")
        clock.tick(5)
        ledger.open_context("alice", "t1", metadata={"é": [1, 2.5, None, True]})
        ledger.update_context("alice", first.context_id, metadata={"x": {"y": "z"}})
        ledger.open_context("alice", "t2")
        clock.tick(50)
        ledger.expire_due()
        ledger.clear_user("alice", reason="done")


@pytest.fixture
def export(durable_url: str, tmp_path: Path) -> Path:
    path = tmp_path / "alice.jsonl"
    with ContextLedger.open(durable_url) as ledger:
        _history(ledger)
        ledger.export("alice", path)
    return path


def test_an_export_round_trips_and_verifies(durable_url: str, export: Path) -> None:
    lines = export.read_bytes().splitlines()
    records = [json.loads(line) for line in lines]
    manifest = records[-1]["manifest"]
    with ContextLedger.open(durable_url) as ledger:
        history = ledger.history("alice")

    assert records[:-1] == [e.model_dump(mode="json") for e in history]
    assert manifest["count"] == len(history) == 6
    assert (manifest["first_version"], manifest["last_version"]) == (1, 6)
    assert manifest["head_hash"] == chain_hash(records[-2])
    report = verify_export(export)
    assert report.intact
    assert report.events == 6


def test_a_period_export_verifies_and_holds_only_that_period(
    durable_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "part.jsonl"
    since, until = T0 + timedelta(seconds=5), T0 + timedelta(seconds=55)
    with ContextLedger.open(durable_url) as ledger:
        _history(ledger)
        manifest = ledger.export("alice", path, since=since, until=until)
        want = ledger.history("alice", since=since, until=until)

    assert (manifest.first_version, manifest.last_version) == (2, 4)
    assert [e.version for e in want] == [2, 3, 4]
    assert verify_export(path).intact


def _fault(path: Path, data: bytes) -> tuple[str | None, int | None]:
    path.write_bytes(data)
    report = verify_export(path)
    assert not report.intact
    assert report.fault is not None
    return report.fault.fault, report.fault.version


def test_a_deleted_line_is_missing(export: Path) -> None:
    lines = export.read_bytes().splitlines(keepends=True)

    assert _fault(export, b"".join(lines[:2] + lines[3:])) == ("missing", 3)
    assert _fault(export, b"".join(lines[1:])) == ("missing", 1)
    assert _fault(export, b"".join(lines[:5] + lines[6:])) == ("missing", 6)
    assert _fault(export, b"".join(lines[:-1]))[0] == "missing"


def test_swapped_lines_are_reordered(export: Path) -> None:
    lines = export.read_bytes().splitlines(keepends=True)
    swapped = [lines[0], lines[2], lines[1], *lines[3:]]

    assert _fault(export, b"".join(swapped)) == ("reordered", 2)


def test_a_changed_value_is_altered(export: Path) -> None:
    data = export.read_bytes()

    assert (
        _fault(export, data.replace(b'"reason":"done"', b'"reason":"gone"', 1))[0]
        == "altered"
    )
    assert _fault(export, data.replace(b'"r1"', b'"r2"', 1)) == ("altered", 1)


def test_an_event_rewritten_with_its_manifest_still_breaks_the_chain(
    export: Path,
) -> None:
    records = [json.loads(line) for line in export.read_bytes().splitlines()]
    records[2]["details"]["metadata"] = {"é": "changed"}
    data = b"".join(canonical_encoding(r) + b"\n" for r in records)

    assert _fault(export, data) == ("altered", 3)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(st.data())
def test_changing_any_one_byte_is_detected(export: Path, data: st.DataObject) -> None:
    original = export.read_bytes()
    position = data.draw(st.integers(0, len(original) - 1), label="position")
    value = data.draw(
        st.integers(0, 255).filter(lambda b: b != original[position]), label="byte"
    )
    changed = bytearray(original)
    changed[position] = value
    try:
        fault = _fault(export, bytes(changed))
    finally:
        export.write_bytes(original)

    assert fault[0] in ("altered", "missing", "reordered")


def test_an_export_is_written_whole_or_not_at_all(
    sqlite_url: str, tmp_path: Path
) -> None:
    with ContextLedger.open(sqlite_url) as ledger:
        _history(ledger)
        with pytest.raises(InvalidContextInput, match="does not exist"):
            ledger.export("alice", tmp_path / "no" / "such" / "x.jsonl")
        with pytest.raises(InvalidContextInput, match="folder"):
            ledger.export("alice", tmp_path)
        with pytest.raises(InvalidContextInput):
            ledger.export("alice", tmp_path / "x.jsonl", since=datetime(2026, 1, 1))  # noqa: DTZ001

    assert sorted(p.name for p in tmp_path.iterdir()) == ["ledger.db"]


def test_export_and_verify_export_commands(sqlite_url: str, tmp_path: Path) -> None:
    with ContextLedger.open(sqlite_url) as ledger:
        _history(ledger)
    out = tmp_path / "alice.jsonl"

    exported = run(
        "--db", sqlite_url, "export", "alice", "--out", str(out), cwd=tmp_path
    )
    intact = run("verify-export", str(out), cwd=tmp_path)
    out.write_bytes(out.read_bytes().replace(b'"t2"', b'"t3"', 1))
    edited = run("verify-export", str(out), cwd=tmp_path)
    absent = run("verify-export", str(tmp_path / "nope.jsonl"), cwd=tmp_path)

    assert exported.returncode == 0, exported.stderr
    assert "exported 6 event(s) of alice" in exported.stdout
    assert intact.returncode == 0, intact.stdout
    assert "intact: 6 event(s) of user alice, versions 1 to 6" in intact.stdout
    assert edited.returncode == 1
    assert "NOT INTACT: line 4 (version 4): altered" in edited.stdout
    assert absent.returncode == 2
    assert "does not exist" in absent.stderr


@pytest.mark.parametrize(
    ("deleted", "expected"),
    [
        (3, "line 3 (version 3): missing: version 3 absent"),
        (1, "line 1 (version 1): missing: version 1 absent"),
        (6, "line 6 (version 6): missing: the manifest lists up to version 6"),
    ],
)
def test_verify_export_names_the_line_where_a_deleted_event_is_missing(
    export: Path, tmp_path: Path, deleted: int, expected: str
) -> None:
    lines = export.read_bytes().splitlines(keepends=True)
    del lines[deleted - 1]
    export.write_bytes(b"".join(lines))

    result = run("verify-export", str(export), cwd=tmp_path)

    assert result.returncode == 1
    assert f"NOT INTACT: {expected}" in result.stdout


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_an_export_is_created_with_the_mode_the_umask_leaves(
    durable_url: str, tmp_path: Path, umask: int, mode: int
) -> None:
    with ContextLedger.open(durable_url) as ledger:
        _history(ledger)
    out = tmp_path / "alice.jsonl"

    result = subprocess.run(
        [
            *("/bin/sh", "-c", f'umask {umask:03o} && exec "$0" "$@"', CTXLEDGER),
            *("--db", durable_url, "export", "alice", "--out", str(out)),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == mode


def test_an_export_that_replaces_a_file_keeps_that_files_mode(
    sqlite_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "alice.jsonl"
    out.write_text("an earlier export")
    out.chmod(0o640)

    with ContextLedger.open(sqlite_url) as ledger:
        _history(ledger)
        ledger.export("alice", out)

    assert stat.S_IMODE(out.stat().st_mode) == 0o640
    assert verify_export(out).intact


def test_an_edited_manifest_field_is_altered(export: Path) -> None:
    data = export.read_bytes()
    manifest = json.loads(data.splitlines()[-1])["manifest"]
    stamp = manifest["exported_at"].encode()

    assert _fault(export, data.replace(stamp, stamp.replace(b"20", b"19", 1)))[0] == (
        "altered"
    )


def test_a_whole_export_missing_its_first_event_fails_even_with_a_fixed_manifest(
    export: Path,
) -> None:
    lines = export.read_bytes().splitlines()
    manifest = json.loads(lines[-1])["manifest"]
    records = [json.loads(line) for line in lines[1:-1]]
    manifest.update(count=len(records), first_version=records[0]["version"])
    fields = {k: v for k, v in manifest.items() if k != "digest"}
    manifest["digest"] = record_hash(fields)
    rewritten = [*records, {"manifest": manifest}]

    fault = _fault(export, b"".join(canonical_encoding(r) + b"\n" for r in rewritten))

    assert fault[0] == "altered"


def test_deeply_nested_json_is_a_fault_not_a_crash(export: Path) -> None:
    assert _fault(export, b"[" * 100_000 + b"\n")[0] == "altered"


def test_report_refuses_a_missing_folder(sqlite_url: str, tmp_path: Path) -> None:
    with ContextLedger.open(sqlite_url) as ledger:
        _history(ledger)

    result = run(
        "--db", sqlite_url, "report", "alice", "--out", "no/x.html", cwd=tmp_path
    )

    assert result.returncode == 1
    assert result.stderr.startswith("InvalidContextInput: out='no/x.html'")


def test_audit_as_of_prints_user_ids_as_text(sqlite_url: str, tmp_path: Path) -> None:
    with ContextLedger.open(sqlite_url) as ledger, freeze_time(T0):
        ledger.open_context("x[/y]", "t[red]1")

    result = run(
        "--db",
        sqlite_url,
        "audit",
        "x[/y]",
        "--as-of",
        "2026-06-01T08:00:00Z",
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    assert "contexts of x[/y] as of 2026-06-01 08:00:00 UTC" in result.stdout
    assert "t[red]1" in result.stdout
    assert "1 active context(s)" in result.stdout
