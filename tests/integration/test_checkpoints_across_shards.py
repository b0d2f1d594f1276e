"""Signed checkpoints over shards: a tree and a checkpoint per shard's log, and a
move (which deletes the originals on the shard the user left) is no tampering."""

from pathlib import Path

import psycopg
import psycopg.sql
import pytest

from ledger import ContextLedger, verify_export, write_checkpoint_key
from ledger._domain.contexts import user_aggregate_id
from ledger._shard_moves import move_user
from ledger._sharded import ShardedLedger
from tests.helpers import dsn_and_schema

pytestmark = pytest.mark.postgres

ORIGIN = "example.com/ctxledger/sharded"


@pytest.fixture(autouse=True)
def short_route_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CTXLEDGER_SHARD_CACHE_SECONDS", "0.3")


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return write_checkpoint_key(ORIGIN, tmp_path / "log")


def spread_users(ledger: ContextLedger, users: int = 12) -> list[str]:
    names = [f"user-{n}" for n in range(users)]
    for name in names:
        for thread in ("a", "b"):
            ledger.open_context(name, thread, metadata={"n": 1})
    return names


def delete_last_event(url: str, user: str) -> None:
    dsn, schema = dsn_and_schema(url)
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute(
            psycopg.sql.SQL(
                "DELETE FROM {} WHERE originator_id = %s AND originator_version = "
                "(SELECT max(originator_version) FROM {} WHERE originator_id = %s)"
            ).format(
                psycopg.sql.Identifier(schema, "ctxledger_events"),
                psycopg.sql.Identifier(schema, "ctxledger_events"),
            ),
            (user_aggregate_id(user), user_aggregate_id(user)),
        )


def test_each_shard_signs_its_own_log_under_its_own_origin(
    sharded_url: str, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    key, public_key = keys
    with ContextLedger.open(sharded_url) as ledger:
        spread_users(ledger)
        signed = ledger.sign_checkpoints(key)
        notes = tmp_path / "checkpoints.txt"
        notes.write_text("\n".join(s.note for s in signed), encoding="utf-8")

        reports = ledger.verify_checkpoints(notes, public_key)

    assert [s.origin for s in signed] == [
        ORIGIN,
        f"{ORIGIN}/shard/1",
        f"{ORIGIN}/shard/2",
    ]
    assert sum(s.size for s in signed) == 12 * 2
    assert all(report.holds for report in reports)


def test_a_deletion_on_one_shard_is_named_by_that_shards_checkpoint(
    sharded_url: str, shard_urls: list[str], keys: tuple[Path, Path], tmp_path: Path
) -> None:
    key, public_key = keys
    with ContextLedger.open(sharded_url) as ledger:
        assert isinstance(ledger, ShardedLedger)
        users = spread_users(ledger)
        signed = ledger.sign_checkpoints(key)
        victim = next(u for u in users if ledger.shard_of(u) == 2)
        delete_last_event(shard_urls[2], victim)

        reports = [ledger.verify_checkpoint(s.note, public_key) for s in signed]

    assert [r.holds for r in reports] == [True, True, False]
    fault = reports[2].fault
    assert fault is not None
    assert (fault.fault, fault.user_id, fault.version) == ("missing", victim, 2)


def test_a_users_move_keeps_every_earlier_checkpoint_holding(
    sharded_url: str, shard_urls: list[str], keys: tuple[Path, Path]
) -> None:
    key, public_key = keys
    with ContextLedger.open(sharded_url) as ledger:
        assert isinstance(ledger, ShardedLedger)
        users = spread_users(ledger)
        before = ledger.sign_checkpoints(key)
        mover = next(u for u in users if ledger.shard_of(u) == 1)
        move_user(sharded_url, mover, shard_urls[2])
        ledger.open_context(mover, "after-the-move")
        after = ledger.sign_checkpoints(key)  # consistent with `before` on each

        reports = [ledger.verify_checkpoint(s.note, public_key) for s in before]

    assert all(report.holds for report in reports), [r.fault for r in reports]
    assert [a.size >= b.size for a, b in zip(after, before, strict=True)] == [True] * 3


def test_an_export_from_a_users_shard_is_proved_in_that_shards_checkpoint(
    sharded_url: str, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    key, public_key = keys
    with ContextLedger.open(sharded_url) as ledger:
        assert isinstance(ledger, ShardedLedger)
        users = spread_users(ledger)
        user = next(u for u in users if ledger.shard_of(u) == 1)
        ledger.export(user, tmp_path / "proved.jsonl", sign_with=key)

    report = verify_export(tmp_path / "proved.jsonl", public_key=public_key)

    assert report.intact, report.fault
    assert report.manifest is not None
    assert report.manifest.log is not None
    assert report.manifest.log.checkpoint.startswith(f"{ORIGIN}/shard/1\n")


def test_a_checkpoint_holds_right_after_a_move_before_any_tree_catches_up(
    sharded_url: str, shard_urls: list[str], keys: tuple[Path, Path]
) -> None:
    key, public_key = keys
    with ContextLedger.open(sharded_url) as ledger:
        assert isinstance(ledger, ShardedLedger)
        users = spread_users(ledger)
        before = ledger.sign_checkpoints(key)
        mover = next(u for u in users if ledger.shard_of(u) == 1)
        move_user(sharded_url, mover, shard_urls[2])

        report = ledger.verify_checkpoint(before[1].note, public_key)

    assert report.holds, report.fault


def test_a_users_move_away_and_back_keeps_every_shards_checkpoints_holding(
    sharded_url: str, shard_urls: list[str], keys: tuple[Path, Path]
) -> None:
    key, public_key = keys
    with ContextLedger.open(sharded_url) as ledger:
        assert isinstance(ledger, ShardedLedger)
        users = spread_users(ledger)
        mover = next(u for u in users if ledger.shard_of(u) == 1)
        before = ledger.sign_checkpoints(key)
        move_user(sharded_url, mover, shard_urls[2])
        between = ledger.sign_checkpoints(key)
        move_user(sharded_url, mover, shard_urls[1])

        reports = [
            ledger.verify_checkpoint(s.note, public_key) for s in (*before, *between)
        ]

    assert all(r.holds for r in reports), [str(r.fault) for r in reports]


def test_an_export_checks_against_the_trusted_note_of_its_own_shard(
    sharded_url: str, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    key, public_key = keys
    with ContextLedger.open(sharded_url) as ledger:
        assert isinstance(ledger, ShardedLedger)
        users = spread_users(ledger)
        published = tmp_path / "published.txt"
        published.write_text(
            "\n".join(s.note for s in ledger.sign_checkpoints(key)), encoding="utf-8"
        )
        user = next(u for u in users if ledger.shard_of(u) == 1)
        ledger.open_context(user, "later")
        ledger.export(user, tmp_path / "proved.jsonl", sign_with=key)

    report = verify_export(
        tmp_path / "proved.jsonl", public_key=public_key, checkpoint=published
    )

    assert report.intact, report.fault
