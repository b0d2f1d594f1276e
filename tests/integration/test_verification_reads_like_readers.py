"""Verification decodes each stored event as the readers do.

A stored event altered by SQL so that every read of its user refuses it (and
tells the operator to run ``ctxledger verify --chain --user U``) is a finding of
that verification, for that user and version, through the API and the CLI; an
event that verification passes is one the readers accept.
"""

from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from click.testing import CliRunner

from ledger import ContextLedger, LedgerCorrupted
from tests.helpers import execute_sql, stream_key

Change = Callable[[dict[str, Any]], None]


def _setting(name: str, value: object) -> Change:
    def change(state: dict[str, Any]) -> None:
        state[name] = value

    return change


def _removing(name: str) -> Change:
    def change(state: dict[str, Any]) -> None:
        del state[name]

    return change


# (the kind of alice's event altered, its version, the change)
REFUSED: dict[str, tuple[int, Change]] = {
    "format 3 on a created event": (1, _setting("format", 3)),
    "format True on a created event": (1, _setting("format", True)),
    "key_generation 'x' on a cleared event": (2, _setting("key_generation", "x")),
    "format '2' (a string) on a cleared event": (2, _setting("format", "2")),
    "format 2.5 on a created event": (3, _setting("format", 2.5)),
    "format None on a created event": (1, _setting("format", None)),
}
"""Each makes every read of alice refuse her stream."""

ANY_CHANGE: dict[str, tuple[int, Change]] = {
    **REFUSED,
    "an extra field on a cleared event": (2, _setting("note", "planted")),
    "class_version 'x' on a cleared event": (2, _setting("class_version", "x")),
    "format 2.5 on the last event": (4, _setting("format", 2.5)),
    "reason missing from a cleared event": (2, _removing("reason")),
    "run_id missing from a created event": (1, _removing("run_id")),
    "reason of the wrong type": (2, _setting("reason", 7)),
    "key_generation True on a cleared event": (2, _setting("key_generation", True)),
    "key_generation -1 on a cleared event": (2, _setting("key_generation", -1)),
    "format 0 on a cleared event": (2, _setting("format", 0)),
    "class_version 2 on a created event": (1, _setting("class_version", 2)),
    "the sealed value missing from a created event": (1, _removing("sealed")),
    "ttl_seconds an integer": (1, _setting("ttl_seconds", 60)),
}
"""Hostile changes of every sort: whether reads refuse each or not, verification
says the same."""


def _write_histories(url: str) -> None:
    """alice: created (1), cleared (2), created (3), updated (4); bob: created."""
    with ContextLedger.open(url) as ledger:
        first = ledger.open_context("alice", "t1", metadata={"a": 1}, ttl_seconds=60.0)
        ledger.clear_context("alice", first.context_id, reason="done")
        second = ledger.open_context("alice", "t2", metadata={"b": 2})
        ledger.update_context("alice", second.context_id, metadata={"c": 3})
        ledger.open_context("bob", "t1", metadata={"d": 4})


def _alter(url: str, user_id: str, version: int, change: Change) -> None:
    """Decodes the stored state of the user's event, changes it, writes it back."""
    key = stream_key(url, user_id)
    ((stored,),) = execute_sql(
        url,
        "SELECT state FROM {events} WHERE originator_id = {p} "
        "AND originator_version = {p}",
        (key, version),
    )
    state = msgpack.unpackb(bytes(stored), raw=False, ext_hook=msgpack.ExtType)
    change(state)
    execute_sql(
        url,
        "UPDATE {events} SET state = {p} WHERE originator_id = {p} "
        "AND originator_version = {p}",
        (msgpack.packb(state, use_bin_type=True), key, version),
    )


def _read_refusal(url: str, user_id: str) -> str | None:
    """What reading the user's history raises (LedgerCorrupted), if it does."""
    with ContextLedger.open(url) as ledger:
        try:
            ledger.history(user_id)
        except LedgerCorrupted as error:
            return str(error)
    return None


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_an_event_readers_refuse_is_a_finding_of_verify_chain_for_its_user(
    durable_url: str, case: str
) -> None:
    version, change = REFUSED[case]
    _write_histories(durable_url)
    _alter(durable_url, "alice", version, change)

    with ContextLedger.open(durable_url) as ledger:
        everyone = ledger.verify_chain()
        alice = ledger.verify_chain("alice")

    refusal = _read_refusal(durable_url, "alice")
    assert refusal is not None
    assert "ctxledger verify --chain --user alice" in refusal
    assert [(u.user_id, u.fault and u.fault.version) for u in everyone.broken] == [
        ("alice", version)
    ]
    assert [u.user_id for u in everyone.users if u.fault is None] == ["bob"]
    assert alice.broken[0].user_id == "alice"
    assert alice.broken[0].fault is not None
    assert alice.broken[0].fault.version == version


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_ctxledger_verify_chain_user_reports_an_event_readers_refuse(
    durable_url: str, case: str
) -> None:
    from ctxledger._cli import main  # noqa: PLC0415  (the CLI, in this process)

    version, change = REFUSED[case]
    _write_histories(durable_url)
    _alter(durable_url, "alice", version, change)

    result = CliRunner().invoke(
        main, ["--db", durable_url, "verify", "--chain", "--user", "alice"]
    )

    assert result.exit_code == 1, result.output
    assert f"BROKEN user alice: version {version}: altered" in result.output
    assert "chain is broken for 1" in result.output


@pytest.mark.parametrize("case", sorted(ANY_CHANGE))
def test_verify_chain_holds_only_where_every_read_of_the_user_succeeds(
    durable_url: str, case: str
) -> None:
    version, change = ANY_CHANGE[case]
    _write_histories(durable_url)
    _alter(durable_url, "alice", version, change)

    refused = _read_refusal(durable_url, "alice") is not None
    with ContextLedger.open(durable_url) as ledger:
        holds = ledger.verify_chain("alice").holds

    assert not (refused and holds)
