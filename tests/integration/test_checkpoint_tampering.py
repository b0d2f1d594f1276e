"""Signed checkpoints against SQL tampering: what the hash chain cannot see.

Each test writes a history on a real SQLite file or a real PostgreSQL schema,
signs a checkpoint, then changes the stored rows as an intruder with write
access to the database would: the checkpoint's verification names the first
event that no longer matches, and an export's proofs fail against the signed
log, where ``verify_chain`` alone still holds.
"""

from dataclasses import dataclass
from pathlib import Path

import pytest

from ledger import (
    CheckpointError,
    CheckpointReport,
    ContextLedger,
    LeafFault,
    verify_export,
    write_checkpoint_key,
)
from ledger._audit.merkle import leaf_hash
from ledger._domain.hashing import chain_hash
from ledger._store.application import SNAPSHOT_INTERVAL
from tests.tampering import (
    delete_event,
    execute_sql,
    rewrite_stream,
    stream_key,
    swap_versions,
)

ORIGIN = "example.com/ctxledger/test"
TURNS = 4
"""Each of alice and bob writes this many events before the checkpoint."""


@dataclass(frozen=True)
class Signed:
    """A ledger with a signed checkpoint: its URL, keys and note."""

    url: str
    key: Path
    public_key: Path
    note: str


def _chat(url: str, users: tuple[str, ...], turns: int, first: int = 0) -> None:
    """Opens, reuses and clears contexts in turn, metadata sealed in each."""
    with ContextLedger.open(url) as ledger:
        for turn in range(first, first + turns):
            for user in users:
                context = ledger.open_context(
                    user, f"t{turn % 2}", run_id=f"r{turn}", metadata={"turn": turn}
                )
                if turn % 3 == 2:
                    ledger.clear_context(user, context.context_id, reason="done")


def _sign(url: str, key: Path) -> str:
    with ContextLedger.open(url) as ledger:
        return ledger.sign_checkpoint(key).note


def _keys(folder: Path, name: str = "log") -> tuple[Path, Path]:
    return write_checkpoint_key(ORIGIN, folder / name)


@pytest.fixture
def signed(durable_url: str, tmp_path: Path) -> Signed:
    """alice and bob's events, and a checkpoint signed over them."""
    _chat(durable_url, ("alice", "bob"), TURNS)
    key, public_key = _keys(tmp_path)
    return Signed(durable_url, key, public_key, _sign(durable_url, key))


def _verify(signed: Signed) -> CheckpointReport:
    with ContextLedger.open(signed.url) as ledger:
        return ledger.verify_checkpoint(signed.note, signed.public_key)


def _fault(signed: Signed) -> LeafFault:
    """The fault of a checkpoint that no longer holds."""
    report = _verify(signed)
    assert not report.holds
    assert report.fault is not None
    return report.fault


def _named(fault: LeafFault) -> tuple[str, str | None, int | None]:
    return fault.fault, fault.user_id, fault.version


def _chain_holds(url: str) -> bool:
    with ContextLedger.open(url) as ledger:
        return ledger.verify_chain().holds


def _last_version(url: str, user: str) -> int:
    with ContextLedger.open(url) as ledger:
        return ledger.history(user)[-1].version


def _export(signed: Signed, path: Path, *, sign: bool = False) -> Path:
    with ContextLedger.open(signed.url) as ledger:
        ledger.export("alice", path, sign_with=signed.key if sign else None)
    return path


# The log as it was signed, and after it grew.


def test_an_untouched_log_extends_its_checkpoint(signed: Signed) -> None:
    report = _verify(signed)

    assert report.holds
    events = sum(_last_version(signed.url, user) for user in ("alice", "bob"))
    assert report.checkpoint_size == report.tree_size == events


def test_events_appended_after_the_checkpoint_keep_it_holding(
    signed: Signed,
) -> None:
    _chat(signed.url, ("alice", "carol"), 3, first=TURNS)

    report = _verify(signed)

    assert report.holds
    assert report.tree_size > report.checkpoint_size


# Tampering the chain cannot see, each named by the checkpoint.


def test_deleting_a_users_last_event_is_named_missing(signed: Signed) -> None:
    last = _last_version(signed.url, "alice")
    delete_event(signed.url, "alice", last)

    assert _chain_holds(signed.url)
    assert _named(_fault(signed)) == ("missing", "alice", last)


def test_a_stream_rewritten_with_its_chain_recomputed_is_named_altered(
    signed: Signed,
) -> None:
    rewrite_stream(signed.url, "alice", run_id="forged")

    assert _chain_holds(signed.url)
    assert _named(_fault(signed)) == ("altered", "alice", 1)


def test_two_swapped_events_are_named_reordered(signed: Signed) -> None:
    swap_versions(signed.url, "bob", 2, 3)

    assert _named(_fault(signed)) == ("reordered", "bob", 2)


def test_deleting_a_snapshot_and_the_events_after_it_is_named_missing(
    durable_url: str, tmp_path: Path
) -> None:
    _chat(durable_url, ("carol",), SNAPSHOT_INTERVAL + 5)
    key, public_key = _keys(tmp_path)
    signed = Signed(durable_url, key, public_key, _sign(durable_url, key))
    carol = stream_key(durable_url, "carol")
    ((snapshot,),) = execute_sql(
        durable_url,
        "SELECT MIN(originator_version) FROM {snapshots} WHERE originator_id = {p}",
        (carol,),
    )
    for table in ("{snapshots}", "{events}"):
        execute_sql(
            durable_url,
            f"DELETE FROM {table} WHERE originator_id = {{p}} "  # noqa: S608  (the test's own tables)
            "AND originator_version >= {p}",
            (carol, snapshot),
        )

    assert _chain_holds(durable_url)
    assert _named(_fault(signed)) == ("missing", "carol", snapshot)


def _delete_leaf_row(url: str, user: str, version: int) -> int:
    """Deletes the row naming the user's event ``version`` in the tree; its leaf."""
    where = "FROM ctxledger_tree_leaves WHERE user_id = {p} AND version = {p}"
    ((leaf,),) = execute_sql(url, f"SELECT leaf {where}", (user, version))
    execute_sql(url, f"DELETE {where}", (user, version))
    return int(leaf)


def test_deleting_a_users_last_event_and_its_leaf_row_is_found_at_its_leaf(
    signed: Signed,
) -> None:
    last = _last_version(signed.url, "alice")
    delete_event(signed.url, "alice", last)
    leaf = _delete_leaf_row(signed.url, "alice", last)

    fault = _fault(signed)

    assert (fault.fault, fault.leaf) == ("missing", leaf)


def _set_leaf_hashes_to_the_log(url: str, user: str) -> None:
    """Stores as the user's leaves the hashes of the events the log holds now,
    leaving the nodes above them (and so the root) as they were."""
    with ContextLedger.open(url) as ledger:
        events = ledger.history(user)
    for event in events:
        digest = leaf_hash(bytes.fromhex(chain_hash(event.model_dump(mode="json"))))
        execute_sql(
            url,
            "UPDATE ctxledger_tree_nodes SET hash = {p} WHERE level = 0 AND idx = "
            "(SELECT leaf FROM ctxledger_tree_leaves WHERE user_id = {p} "
            "AND version = {p})",
            (digest, user, event.version),
        )


def test_a_stream_rewritten_with_its_leaf_hashes_rewritten_too_is_inconsistent(
    signed: Signed,
) -> None:
    rewrite_stream(signed.url, "alice", run_id="forged")
    _set_leaf_hashes_to_the_log(signed.url, "alice")

    assert _chain_holds(signed.url)
    assert _fault(signed).fault == "inconsistent"


# Exports and their proofs against the signed log.


def test_an_untouched_export_signed_on_writing_is_proved(
    signed: Signed, tmp_path: Path
) -> None:
    path = _export(signed, tmp_path / "alice.jsonl", sign=True)

    report = verify_export(path, public_key=signed.public_key)

    assert report.fault is None
    assert report.events == _last_version(signed.url, "alice")


def test_an_export_of_a_truncated_stream_fails_as_missing(
    signed: Signed, tmp_path: Path
) -> None:
    last = _last_version(signed.url, "alice")
    delete_event(signed.url, "alice", last)
    path = _export(signed, tmp_path / "alice.jsonl")

    fault = verify_export(path, public_key=signed.public_key).fault

    assert verify_export(path).fault is None
    assert fault is not None
    assert (fault.fault, fault.version) == ("missing", last)


def test_a_tail_cut_with_its_leaf_row_too_is_found_by_checkpoint_verify(
    signed: Signed, tmp_path: Path
) -> None:
    # An export finds a user's last signed event through the tree's rows, which
    # nothing signs (README, "What the tree's tables are trusted for"): with the
    # row deleted too, only the scan of the whole log finds the cut.
    last = _last_version(signed.url, "alice")
    delete_event(signed.url, "alice", last)
    leaf = _delete_leaf_row(signed.url, "alice", last)
    path = _export(signed, tmp_path / "alice.jsonl")

    exported = verify_export(path, public_key=signed.public_key)
    fault = _fault(signed)

    assert exported.intact
    assert (fault.fault, fault.leaf) == ("missing", leaf)


def test_an_export_with_events_after_the_checkpoint_fails_as_unproven(
    signed: Signed, tmp_path: Path
) -> None:
    _chat(signed.url, ("alice",), 1, first=TURNS)
    path = _export(signed, tmp_path / "alice.jsonl")

    fault = verify_export(path, public_key=signed.public_key).fault

    assert fault is not None
    assert (fault.fault, fault.version) == (
        "unproven",
        _last_version(signed.url, "alice"),
    )


# Keys that did not sign the checkpoint.


def test_a_checkpoint_checked_with_another_key_of_the_same_name_is_refused(
    signed: Signed, tmp_path: Path
) -> None:
    _, other = _keys(tmp_path, "other")

    with (
        ContextLedger.open(signed.url) as ledger,
        pytest.raises(CheckpointError, match="no signature by key"),
    ):
        ledger.verify_checkpoint(signed.note, other)


def test_an_export_checked_with_another_key_fails(
    signed: Signed, tmp_path: Path
) -> None:
    path = _export(signed, tmp_path / "alice.jsonl", sign=True)
    _, other = _keys(tmp_path, "other")

    fault = verify_export(path, public_key=other).fault

    assert fault is not None
    assert fault.fault == "altered"
    assert "no signature by key" in fault.detail


# Signing refuses a tree that does not extend the last checkpoint.


def _tree_nodes(url: str) -> list[tuple[int, int, bytes]]:
    rows = execute_sql(url, "SELECT level, idx, hash FROM ctxledger_tree_nodes")
    return [(int(level), int(index), bytes(digest)) for level, index, digest in rows]


def _store_tree_nodes(url: str, nodes: list[tuple[int, int, bytes]]) -> None:
    for level, index, digest in nodes:
        execute_sql(
            url,
            "UPDATE ctxledger_tree_nodes SET hash = {p} "
            "WHERE level = {p} AND idx = {p}",
            (digest, level, index),
        )


def _forge_tree_nodes(url: str) -> list[tuple[int, int, bytes]]:
    """Overwrites every node of the tree; the rows as they were."""
    honest = _tree_nodes(url)
    _store_tree_nodes(url, [(level, i, bytes(32)) for level, i, _ in honest])
    return honest


def test_signing_refuses_a_tree_whose_nodes_were_rewritten(signed: Signed) -> None:
    _forge_tree_nodes(signed.url)

    with pytest.raises(CheckpointError, match="refusing to sign"):
        _sign(signed.url, signed.key)


def test_signing_works_again_once_the_trees_nodes_are_restored(
    signed: Signed,
) -> None:
    honest = _forge_tree_nodes(signed.url)
    with pytest.raises(CheckpointError):
        _sign(signed.url, signed.key)
    _store_tree_nodes(signed.url, honest)

    note = _sign(signed.url, signed.key)

    assert note == signed.note


def test_signing_refuses_a_log_rewritten_with_its_tree_rebuilt(
    signed: Signed,
) -> None:
    rewrite_stream(signed.url, "alice", run_id="forged")
    for statement in (
        "DELETE FROM ctxledger_tree_nodes",
        "DELETE FROM ctxledger_tree_leaves",
        "UPDATE ctxledger_tree SET size = 0, position = 0",
    ):
        execute_sql(signed.url, statement)

    with pytest.raises(CheckpointError, match="refusing to sign"):
        _sign(signed.url, signed.key)
