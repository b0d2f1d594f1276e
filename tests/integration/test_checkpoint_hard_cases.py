"""Signed checkpoints against an intruder who knows how they work: an event
filed under another stream, sealed metadata swapped between events, a tail cut
before a bounded export, an older checkpoint kept to prove an export against,
forged metadata beside a proof; and an auditor whose role may not write."""

import json
import os
import subprocess
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ledger import (
    CheckpointError,
    ContextLedger,
    verify_event_proof,
    verify_export,
    write_checkpoint_key,
)
from ledger._domain.hashing import canonical_encoding, record_hash
from tests.tampering import (
    delete_event,
    execute_sql,
    store_event,
    stored_event,
    stream_key,
)

ORIGIN = "example.com/ctxledger/hard"
FAR_FUTURE = datetime(2100, 1, 1, tzinfo=UTC)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return write_checkpoint_key(ORIGIN, tmp_path / "log")


def chat(url: str, user: str = "alice") -> None:
    with ContextLedger.open(url) as ledger:
        context = ledger.open_context(user, "t", metadata={"iban": "DE00 1111"})
        ledger.update_context(user, context.context_id, metadata={"iban": "DE99"})
        ledger.open_context(user, "t", metadata={"note": "x"})
        ledger.clear_context(user, context.context_id)


def sign(url: str, key: Path) -> str:
    with ContextLedger.open(url) as ledger:
        return ledger.sign_checkpoint(key).note


def verify(url: str, note: str, public_key: Path) -> Any:
    with ContextLedger.open(url) as ledger:
        return ledger.verify_checkpoint(note, public_key)


def another_stream_like(key: Any) -> Any:
    if isinstance(key, uuid.UUID):
        return uuid.uuid4()
    return uuid.uuid4().hex if len(str(key)) == 32 else str(uuid.uuid4())


def test_an_event_refiled_under_another_stream_is_named_altered(
    durable_url: str, keys: tuple[Path, Path]
) -> None:
    key, public_key = keys
    chat(durable_url)
    note = sign(durable_url, key)
    here = stream_key(durable_url, "alice")
    execute_sql(
        durable_url,
        "UPDATE {events} SET originator_id = {p} "
        "WHERE originator_id = {p} AND originator_version = 4",
        (another_stream_like(here), here),
    )

    fault = verify(durable_url, note, public_key).fault

    assert fault is not None
    assert (fault.fault, fault.user_id, fault.version) == ("altered", "alice", 4)
    assert "owns another stream" in fault.detail


def test_sealed_metadata_swapped_between_events_is_named_altered(
    durable_url: str, keys: tuple[Path, Path]
) -> None:
    key, public_key = keys
    chat(durable_url)
    note = sign(durable_url, key)
    first, second = (
        stored_event(durable_url, "alice", 1),
        stored_event(durable_url, "alice", 2),
    )
    store_event(durable_url, "alice", 1, {**first, "sealed": second["sealed"]})

    fault = verify(durable_url, note, public_key).fault

    assert fault is not None
    assert (fault.fault, fault.version) == ("altered", 1)
    assert "metadata_commitment" in fault.detail


def test_an_export_up_to_a_later_time_fails_after_a_tail_cut(
    durable_url: str, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    key, public_key = keys
    chat(durable_url)
    sign(durable_url, key)
    delete_event(durable_url, "alice", 4)
    with ContextLedger.open(durable_url) as ledger:
        ledger.export("alice", tmp_path / "until.jsonl", until=FAR_FUTURE)

    fault = verify_export(tmp_path / "until.jsonl", public_key=public_key).fault

    assert fault is not None
    assert (fault.fault, fault.version) == ("missing", 4)


def test_an_export_of_a_period_after_the_users_last_event_is_intact(
    sqlite_url: str, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    key, public_key = keys
    chat(sqlite_url)
    sign(sqlite_url, key)
    with ContextLedger.open(sqlite_url) as ledger:
        ledger.export("alice", tmp_path / "later.jsonl", since=FAR_FUTURE)

    report = verify_export(tmp_path / "later.jsonl", public_key=public_key)

    assert report.intact, report.fault
    assert report.events == 0


def test_an_export_proved_against_an_older_checkpoint_than_the_trusted_one_fails(
    sqlite_url: str, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    key, public_key = keys
    chat(sqlite_url)
    sign(sqlite_url, key)
    chat(sqlite_url, "bob")
    newest = tmp_path / "published.txt"
    newest.write_text(sign(sqlite_url, key), encoding="utf-8")
    execute_sql(
        sqlite_url,
        "DELETE FROM ctxledger_checkpoints WHERE size = "
        "(SELECT max(size) FROM ctxledger_checkpoints)",
    )
    with ContextLedger.open(sqlite_url) as ledger:
        ledger.export("alice", tmp_path / "alice.jsonl")

    alone = verify_export(tmp_path / "alice.jsonl", public_key=public_key)
    trusted = verify_export(
        tmp_path / "alice.jsonl", public_key=public_key, checkpoint=newest
    )

    assert alone.intact
    assert trusted.fault is not None
    assert trusted.fault.fault == "unproven"
    assert "not shown to extend the one you trust" in trusted.fault.detail


def test_an_event_proof_refuses_forged_metadata_and_malformed_events(
    sqlite_url: str, keys: tuple[Path, Path]
) -> None:
    key, public_key = keys
    chat(sqlite_url)
    with ContextLedger.open(sqlite_url) as ledger:
        ledger.sign_checkpoint(key)
        proof = ledger.prove_event("alice", 1)
        event = ledger.history("alice")[0].model_dump(mode="json")
    forged = {**event, "details": {**event["details"], "metadata": {"iban": "X"}}}

    assert verify_event_proof(proof, event, public_key)
    assert not verify_event_proof(proof, forged, public_key)
    malformed_events: list[object] = [{}, {"details": 1}, [], "x", None]
    for malformed in malformed_events:
        with pytest.raises(CheckpointError, match="not a LedgerEvent"):
            verify_event_proof(proof, malformed, public_key)  # type: ignore[arg-type]


def test_a_pipe_given_as_a_key_is_refused_not_waited_on(
    sqlite_url: str, tmp_path: Path
) -> None:
    pipe = tmp_path / "key.fifo"
    os.mkfifo(pipe)
    with ContextLedger.open(sqlite_url) as ledger:
        with pytest.raises(CheckpointError, match="not a regular file"):
            ledger.sign_checkpoint(pipe)
        with pytest.raises(CheckpointError, match="neither a file"):
            ledger.sign_checkpoint(str(pipe))


@pytest.mark.postgres
def test_an_auditor_whose_role_may_not_write_verifies_against_the_tree_as_it_stands(
    postgres_url: str, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    key, public_key = keys
    chat(postgres_url)
    (tmp_path / "note").write_text(sign(postgres_url, key), encoding="utf-8")
    chat(postgres_url, "bob")  # the tree has not taken these yet
    code = (
        "import sys\nfrom ledger import ContextLedger\n"
        f"with ContextLedger.open({postgres_url!r}, create=False) as ledger:\n"
        f"    report = ledger.verify_checkpoint({str(tmp_path / 'note')!r}, "
        f"{str(public_key)!r})\n"
        "print(report.holds)\n"
    )
    env = {**os.environ, "PGOPTIONS": "-c default_transaction_read_only=on"}

    done = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )

    assert done.stdout.strip() == "True", done.stderr


def test_an_export_of_a_log_forked_after_the_trusted_checkpoint_fails(
    sqlite_url: str, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    # The intruder cuts alice's tail, drops the tree and the kept checkpoints,
    # and lets the ledger sign a larger tree over the rewritten log.
    key, public_key = keys
    chat(sqlite_url)
    trusted = tmp_path / "published.txt"
    trusted.write_text(sign(sqlite_url, key), encoding="utf-8")
    delete_event(sqlite_url, "alice", 4)
    for table in ("tree", "tree_nodes", "tree_leaves", "checkpoints"):
        execute_sql(sqlite_url, f"DROP TABLE ctxledger_{table}")
    chat(sqlite_url, "bob")
    with ContextLedger.open(sqlite_url) as ledger:
        ledger.export("alice", tmp_path / "alice.jsonl", sign_with=key)

    report = verify_export(
        tmp_path / "alice.jsonl", public_key=public_key, checkpoint=trusted
    )

    assert report.fault is not None
    assert report.fault.fault == "unproven"


def test_an_export_extending_a_trusted_checkpoint_passes_with_it(
    sqlite_url: str, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    key, public_key = keys
    chat(sqlite_url)
    trusted = tmp_path / "published.txt"
    trusted.write_text(sign(sqlite_url, key), encoding="utf-8")
    chat(sqlite_url, "bob")
    with ContextLedger.open(sqlite_url) as ledger:
        ledger.export("alice", tmp_path / "alice.jsonl", sign_with=key)

    report = verify_export(
        tmp_path / "alice.jsonl", public_key=public_key, checkpoint=trusted
    )

    assert report.intact, report.fault


def test_a_malformed_last_event_record_in_an_export_is_a_fault_not_a_crash(
    sqlite_url: str, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    key, public_key = keys
    chat(sqlite_url)
    with ContextLedger.open(sqlite_url) as ledger:
        ledger.export("alice", tmp_path / "alice.jsonl", sign_with=key)
    path = tmp_path / "alice.jsonl"
    *lines, last = path.read_text(encoding="utf-8").splitlines()
    manifest = json.loads(last)["manifest"]
    manifest["log"]["user_last"]["record"] = {"details": 1}
    manifest.pop("digest")
    manifest["digest"] = record_hash(manifest)
    encoded = canonical_encoding({"manifest": manifest}).decode("utf-8")
    path.write_text("\n".join([*lines, encoded]) + "\n", encoding="utf-8")

    report = verify_export(path, public_key=public_key)

    assert report.fault is not None
    assert report.fault.fault == "altered"


def test_sign_refuses_a_tree_whose_leaves_after_the_last_checkpoint_are_not_the_logs(
    durable_url: str, keys: tuple[Path, Path]
) -> None:
    key, _ = keys
    chat(durable_url)
    sign(durable_url, key)
    with ContextLedger.open(durable_url) as ledger:
        ledger.open_context("bob", "t")
        # An odd size: the last leaf is a node the root is folded from.
        while (size := ledger.catch_up_tree().size) % 2 == 0:
            ledger.open_context("bob", f"t{size}")
    execute_sql(
        durable_url,
        "UPDATE ctxledger_tree_nodes SET hash = {p} WHERE level = 0 AND idx = {p}",
        (b"\x00" * 32, size - 1),
    )

    with (
        ContextLedger.open(durable_url) as ledger,
        pytest.raises(CheckpointError, match="are not the log's events"),
    ):
        ledger.sign_checkpoint(key)


def test_a_restore_of_an_older_backup_says_how_many_events_a_later_checkpoint_lost(
    durable_url: str, keys: tuple[Path, Path]
) -> None:
    key, public_key = keys
    chat(durable_url, "alice")
    early = sign(durable_url, key)  # 4 leaves: the backup is taken here
    chat(durable_url, "bob")
    late = sign(durable_url, key)  # 8 leaves
    # The database as the backup holds it: bob's events and every tree row and
    # checkpoint after the fourth leaf are not in it.
    for version in (1, 2, 3, 4):
        delete_event(durable_url, "bob", version)
    execute_sql(durable_url, "DELETE FROM ctxledger_tree_leaves WHERE leaf >= 4")
    execute_sql(
        durable_url,
        "DELETE FROM ctxledger_tree_nodes WHERE (idx + 1) * (1 << level) > 4",
    )
    execute_sql(durable_url, "DELETE FROM ctxledger_checkpoints WHERE size > 4")
    (position,) = execute_sql(
        durable_url, "SELECT position FROM ctxledger_tree_leaves WHERE leaf = 3"
    )[0]
    execute_sql(
        durable_url,
        "UPDATE ctxledger_tree SET size = 4, position = {p}",
        (position,),
    )

    assert verify(durable_url, early, public_key).holds
    report = verify(durable_url, late, public_key)

    assert not report.holds
    assert report.fault is not None
    assert report.fault.fault == "missing"
    assert "fewer than the checkpoint's 8" in report.fault.detail
    assert "the events from leaf 4 on if the log was only cut" in report.fault.detail

    # Written to after the restore: the log forks from the later checkpoint.
    chat(durable_url, "carol")
    chat(durable_url, "dave")
    forked = verify(durable_url, late, public_key)

    assert verify(durable_url, early, public_key).holds
    assert forked.fault is not None
    assert forked.fault.fault == "inconsistent"
    assert "the log and its tree agree with each other" in forked.fault.detail
    assert "does not extend it" in forked.fault.detail
