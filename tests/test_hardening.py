"""Defects found by an adversarial pass: NUL characters, clock skew between hosts,
builtin subclasses in metadata, one damaged user during expire_due, and times at
the ends of the calendar."""

import enum
import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgpack
import pytest

from ledger import (
    ContextLedger,
    ContextNotFound,
    InvalidContextInput,
    LedgerCorrupted,
)
from tests.helpers import OpenLedger, execute_sql, run, stream_key

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def _kinds(ledger: ContextLedger, user: str) -> list[str]:
    return [event.kind for event in ledger.history(user)]


# 1. NUL characters are refused at the API: PostgreSQL's text and jsonb cannot
# hold them, and a view that could not store one would stall for every user.

NUL_CALLS: list[tuple[str, Any]] = [
    ("metadata value", lambda lg, c: lg.open_context("a", "t2", metadata={"k": "\0"})),
    ("metadata key", lambda lg, c: lg.open_context("a", "t2", metadata={"k\0": 1})),
    ("nested", lambda lg, c: lg.update_context("a", c, metadata={"k": [{"x": "\0"}]})),
    ("clear reason", lambda lg, c: lg.clear_context("a", c, reason="gone\0")),
    ("clear_user reason", lambda lg, c: lg.clear_user("a", reason="\0")),
]


@pytest.mark.parametrize(("where", "call"), NUL_CALLS, ids=[n for n, _ in NUL_CALLS])
def test_a_nul_character_is_refused_and_nothing_is_appended(
    ledger: ContextLedger, where: str, call: Any
) -> None:
    context = ledger.open_context("a", "t1")

    with pytest.raises(InvalidContextInput, match="NUL character"):
        call(ledger, context.context_id)

    assert _kinds(ledger, "a") == ["created"]


# 2. A host whose clock is behind decides with the stream's time.


@pytest.fixture
def hosts(durable_url: str) -> Iterator[Callable[[Clock], ContextLedger]]:
    """Opens the test's ledger as another host would, with its own clock."""
    opened: list[ContextLedger] = []

    def open_host(clock: Clock) -> ContextLedger:
        opened.append(ContextLedger.open(durable_url, clock=clock))
        return opened[-1]

    yield open_host
    for ledger in opened:
        ledger.close()


def test_a_host_whose_clock_is_behind_does_not_revive_an_expired_context(
    hosts: Callable[[Clock], ContextLedger],
) -> None:
    ahead, behind = Clock(T0), Clock(T0)
    host_a, host_b = hosts(ahead), hosts(behind)
    context = host_a.open_context("alice", "t1", ttl_seconds=60)
    host_a.open_context("alice", "t2")
    ahead.at = T0 + timedelta(seconds=100)
    behind.at = ahead.at - timedelta(seconds=195)  # B's clock is 195 s behind A's
    host_a.open_context("alice", "t2")  # a reuse: the stream's time is now T0 + 100 s

    with pytest.raises(ContextNotFound):
        host_b.update_context("alice", context.context_id, metadata={"n": 1})
    assert host_b.get_context("alice", "t1") is None
    reopened = host_b.open_context("alice", "t1")

    assert reopened.context_id != context.context_id
    history = host_b.history("alice")
    assert [e.kind for e in history] == [
        "created",
        "created",
        "reused",
        "expired",
        "created",
    ]
    times = [event.occurred_at for event in history]
    assert times == sorted(times)
    assert all(time >= T0 + timedelta(seconds=100) for time in times[2:])
    # Once its time ran out, the context is never shown alive again.
    for event in history:
        alive = {
            c.context_id for c in host_b.contexts_as_of("alice", event.occurred_at)
        }
        if event.occurred_at >= T0 + timedelta(seconds=60):
            assert context.context_id not in alive


def test_a_host_whose_clock_is_behind_sees_the_stream_time_in_queries(
    hosts: Callable[[Clock], ContextLedger],
) -> None:
    ahead, behind = Clock(T0), Clock(T0 - timedelta(seconds=300))
    host_a, host_b = hosts(ahead), hosts(behind)
    host_a.open_context("alice", "t1", ttl_seconds=60)
    host_a.open_context("alice", "t2")
    ahead.at += timedelta(seconds=120)
    host_a.open_context("alice", "t2")  # a reuse: no expiry recorded

    assert host_b.get_context("alice", "t1") is None
    assert [c.thread_id for c in host_b.active_contexts("alice")] == ["t2"]


# 3. Subclasses of str, int and float become plain values, keys included.


class Colour(enum.StrEnum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Loud(str):
    def __str__(self) -> str:
        return "LOUD"

    def __hash__(self) -> int:
        return 1


class Ratio(float):
    def __repr__(self) -> str:
        return "ratio"


def test_builtin_subclasses_at_any_depth_are_stored_as_plain_values(
    durable_url: str,
) -> None:
    metadata = {
        "top": {Colour.RED: Level.HIGH, Loud("k"): [Ratio(0.5), Colour.RED]},
        Loud("outer"): {"deep": {Colour.RED: {Loud("x"): Level.HIGH}}},
    }

    with ContextLedger.open(durable_url) as ledger:
        context = ledger.open_context("alice", "t", metadata=metadata)
        updated = ledger.update_context("alice", context.context_id, metadata=metadata)
    with ContextLedger.open(durable_url) as again:  # a replay from the store
        replayed = again.get_context("alice", "t")
        report = again.verify_chain()

    expected = {
        "top": {"red": 3, "k": [0.5, "red"]},
        "outer": {"deep": {"red": {"x": 3}}},
    }
    assert context.metadata == expected
    assert replayed == updated
    assert replayed is not None
    assert _plain(replayed.metadata)
    assert _plain(context.metadata)
    assert report.holds, report


def _plain(value: object) -> bool:
    if isinstance(value, dict):
        return all(type(k) is str and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(item) for item in value)
    return type(value) in (str, int, float, bool, type(None))


def test_keys_that_become_the_same_string_are_refused(ledger: ContextLedger) -> None:
    with pytest.raises(InvalidContextInput, match="twice"):
        ledger.open_context("alice", "t", metadata={Loud("red"): 1, Colour.RED: 2})

    assert ledger.history("alice") == []


# 4. One user's damaged event does not stop the others' expiries.


@pytest.mark.parametrize("damage", ["undecodable", "invalid", "unhashable key"])
def test_expire_due_records_the_others_and_names_the_damaged_user(
    durable_url: str, tmp_path: Path, damage: str
) -> None:
    clock = Clock(T0)
    with ContextLedger.open(durable_url, clock=clock) as ledger:
        for user in ("alice", "bob", "carol"):
            ledger.open_context(user, "t", ttl_seconds=60)
        ledger.open_context("bob", "u", ttl_seconds=60)
    state = "{c1}" if damage == "undecodable" else "{p}"
    params: tuple[Any, ...] = (stream_key(durable_url, "bob"),)
    if damage == "invalid":  # msgpack, but not an event
        params = (msgpack.packb({"user_id": "bob", "kind": "?"}), *params)
    if damage == "unhashable key":  # a map whose key is a list
        params = (b"\x81\x91\x01\x01", *params)
    execute_sql(
        durable_url,
        f"UPDATE {{events}} SET state = {state} "  # noqa: S608  (a literal)
        "WHERE originator_id = {p} AND originator_version = 2",
        params,
    )
    clock.at = T0 + timedelta(seconds=61)

    with ContextLedger.open(durable_url, clock=clock) as ledger:
        with pytest.raises(LedgerCorrupted) as caught:
            ledger.expire_due()
        alice, carol = _kinds(ledger, "alice"), _kinds(ledger, "carol")
        again = ledger.history("alice")

    assert caught.value.user_id == "bob"
    assert "recorded 2 expiries of other users" in "\n".join(
        getattr(caught.value, "__notes__", [])
    )
    assert alice == carol == ["created", "expired"]
    assert len(again) == 2
    cli = run("--db", durable_url, "expire", cwd=tmp_path)  # one line, exit 1
    assert cli.returncode == 1
    assert "bob" in cli.stderr
    assert "Traceback" not in cli.stderr


# 5. The ends of the calendar.


def test_a_time_to_live_past_the_year_9999_ends_at_the_last_time(
    open_ledger: OpenLedger,
) -> None:
    clock = Clock(datetime(9999, 12, 31, 23, 0, tzinfo=UTC))
    ledger = open_ledger(clock=clock)

    context = ledger.open_context("alice", "t", ttl_seconds=7200)
    reused = ledger.open_context("alice", "t", ttl_seconds=3 * 365 * 24 * 3600)
    clock.at = datetime.max.replace(tzinfo=UTC)
    expired = ledger.expire_due()

    assert context.expires_at == datetime.max.replace(tzinfo=UTC)
    assert reused.reuse_count == 1
    assert expired == 1
    assert _kinds(ledger, "alice") == ["created", "reused", "expired"]
    assert ledger.verify_chain().holds


class BrokenPath(os.PathLike[str]):
    def __fspath__(self) -> str:
        raise RuntimeError("no path")


@pytest.mark.parametrize("where", ["broken", "missing folder/", "folder/"])
def test_an_export_to_a_path_that_is_no_file_is_refused(
    durable_url: str, tmp_path: Path, where: str
) -> None:
    (tmp_path / "folder").mkdir()
    path: Any = BrokenPath() if where == "broken" else f"{tmp_path}/{where}"
    with ContextLedger.open(durable_url) as ledger:
        ledger.open_context("alice", "t")
        with pytest.raises(InvalidContextInput):
            ledger.export("alice", path)

    assert not (tmp_path / "missing folder").exists()
    assert list((tmp_path / "folder").iterdir()) == []
