"""The checkpoint calls of the Python API: erasure keeps checkpoints holding, the
asyncio twin, a memory ledger, keys given as text or files, and the views'
catch-up keeping the tree."""

import asyncio
from pathlib import Path

import pytest

from ledger import (
    AsyncContextLedger,
    CheckpointError,
    ContextLedger,
    LedgerConfigError,
    verify_event_proof,
    verify_export,
    write_checkpoint_key,
)
from projections import Projections

ORIGIN = "example.com/ctxledger/api"


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return write_checkpoint_key(ORIGIN, tmp_path / "log")


def write_some(ledger: ContextLedger, users: int = 3) -> None:
    for n in range(users):
        context = ledger.open_context(f"user-{n}", "t", metadata={"email": "a@b.c"})
        ledger.update_context(f"user-{n}", context.context_id, metadata={"n": n})


def test_an_erasure_after_a_checkpoint_leaves_it_holding(
    durable_url: str, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    key, public_key = keys
    with ContextLedger.open(durable_url) as ledger:
        write_some(ledger)
        signed = ledger.sign_checkpoint(key)
        ledger.forget_user("user-1")

        report = ledger.verify_checkpoint(signed.note, public_key)
        ledger.export("user-1", tmp_path / "erased.jsonl", sign_with=key)

    assert report.holds, report.fault
    assert verify_export(tmp_path / "erased.jsonl", public_key=public_key).intact


def test_the_views_catch_up_takes_every_event_into_the_tree(durable_url: str) -> None:
    with ContextLedger.open(durable_url) as ledger:
        write_some(ledger, users=4)
        events = ledger.chain_size()
    with Projections.open(durable_url) as views:
        views.catch_up()
    with ContextLedger.open(durable_url) as ledger:
        head = ledger.catch_up_tree()

    assert head.size == 8 == events


def test_a_signed_checkpoint_is_kept_and_a_later_one_extends_it(
    durable_url: str, keys: tuple[Path, Path]
) -> None:
    key, public_key = keys
    with ContextLedger.open(durable_url) as ledger:
        write_some(ledger)
        first = ledger.sign_checkpoint(key)
        write_some(ledger)
        second = ledger.sign_checkpoint(key)

        assert ledger.latest_checkpoint() == second.note
        assert ledger.verify_checkpoint(first.note, public_key).holds
    assert (first.size, second.size) == (6, 12)
    assert first.note.startswith(f"{ORIGIN}\n6\n")


def test_the_asyncio_ledger_signs_and_verifies_on_its_threads(
    sqlite_url: str, keys: tuple[Path, Path]
) -> None:
    key, public_key = keys

    async def run() -> bool:
        async with AsyncContextLedger.open(sqlite_url) as ledger:
            await ledger.open_context("alice", "t")
            signed = await ledger.sign_checkpoint(key)
            report = await ledger.verify_checkpoint(signed.note, public_key)
            return report.holds

    assert asyncio.run(run())


def test_a_memory_ledger_keeps_no_tree_and_says_so(keys: tuple[Path, Path]) -> None:
    key, _ = keys
    with ContextLedger.open("memory://") as ledger:
        ledger.open_context("alice", "t")
        with pytest.raises(LedgerConfigError, match="memory:// ledger keeps no Merkle"):
            ledger.sign_checkpoint(key)


def test_a_key_may_be_given_as_its_text_and_anything_else_is_refused(
    sqlite_url: str, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    key, public_key = keys
    with ContextLedger.open(sqlite_url) as ledger:
        ledger.open_context("alice", "t")
        signed = ledger.sign_checkpoint(key.read_text())
        assert ledger.verify_checkpoint(signed.note, public_key.read_text()).holds

        with pytest.raises(CheckpointError, match="neither a file"):
            ledger.sign_checkpoint(str(tmp_path / "no-such-key"))
        with pytest.raises(CheckpointError, match="must start with PRIVATE"):
            ledger.sign_checkpoint(public_key)  # the verifier key, not the signer's
        other = write_checkpoint_key(ORIGIN, tmp_path / "other")[1]
        with pytest.raises(CheckpointError, match="no signature by key"):
            ledger.verify_checkpoint(signed.note, other)


def test_a_key_file_is_never_overwritten(tmp_path: Path) -> None:
    write_checkpoint_key(ORIGIN, tmp_path / "log")
    before = (tmp_path / "log.key").read_bytes()

    with pytest.raises(CheckpointError, match="never overwritten"):
        write_checkpoint_key(ORIGIN, tmp_path / "log")

    assert (tmp_path / "log.key").read_bytes() == before
    assert (tmp_path / "log.key").stat().st_mode & 0o777 == 0o600


def test_one_events_tlog_proof_verifies_offline_and_not_for_another_event(
    durable_url: str, keys: tuple[Path, Path]
) -> None:
    key, public_key = keys
    with ContextLedger.open(durable_url) as ledger:
        write_some(ledger)
        ledger.sign_checkpoint(key)
        proof = ledger.prove_event("user-1", 2)
        first, second = ledger.history("user-1")

    assert proof.startswith("c2sp.org/tlog-proof@v1\nindex ")
    assert verify_event_proof(proof, second, public_key)
    assert not verify_event_proof(proof, first, public_key)
    assert not verify_event_proof(
        proof, second.model_copy(update={"thread_id": "other"}), public_key
    )


def test_an_event_after_the_latest_checkpoint_has_no_proof_yet(
    sqlite_url: str, keys: tuple[Path, Path]
) -> None:
    key, _ = keys
    with ContextLedger.open(sqlite_url) as ledger:
        write_some(ledger, users=1)
        with pytest.raises(CheckpointError, match="no signed checkpoint covers"):
            ledger.prove_event("user-0", 1)
        ledger.sign_checkpoint(key)
        ledger.open_context("user-0", "later")
        with pytest.raises(CheckpointError, match="version 3 of user 'user-0'"):
            ledger.prove_event("user-0", 3)
