"""Every call takes effect once: a repeated request id returns the first result,
and a write whose reply is lost is settled from the store, never applied twice."""

import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest

from ledger import (
    ContextLedger,
    ContextNotFound,
    InvalidContextInput,
    StorageUnavailable,
)
from ledger._domain import contexts as domain_contexts
from tests.helpers import CuttingProxy
from tests.tampering import execute_sql


def _when_back(call: Callable[[], object], seconds: float = 60.0) -> None:
    """Repeats ``call`` while the database's connection pool is still reconnecting."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            call()
        except StorageUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
        else:
            return


def _kinds(ledger: ContextLedger, user: str) -> list[str]:
    return [event.kind for event in ledger.history(user)]


def test_a_repeated_open_returns_the_first_context_and_appends_nothing(
    ledger: ContextLedger,
) -> None:
    first = ledger.open_context("alice", "t1", metadata={"a": 1}, request_id="m-1")
    ledger.update_context("alice", first.context_id, metadata={"b": 2})

    again = ledger.open_context("alice", "t1", metadata={"a": 9}, request_id="m-1")

    assert again == first
    assert _kinds(ledger, "alice") == ["created", "updated"]


def test_a_repeated_update_clear_and_clear_user_append_nothing(
    ledger: ContextLedger,
) -> None:
    one = ledger.open_context("alice", "t1")
    two = ledger.open_context("alice", "t2")
    updated = ledger.update_context(
        "alice", one.context_id, metadata={"n": 1}, request_id="u"
    )
    ledger.clear_context("alice", two.context_id, request_id="c")
    cleared = ledger.clear_user("alice", request_id="all")

    assert (
        ledger.update_context(
            "alice", one.context_id, metadata={"n": 2}, request_id="u"
        )
        == updated
    )
    ledger.clear_context("alice", two.context_id, request_id="c")
    assert ledger.clear_user("alice", request_id="all") == cleared == 1
    assert _kinds(ledger, "alice") == [
        "created",
        "created",
        "updated",
        "cleared",
        "cleared",
    ]


def test_request_ids_are_per_user(ledger: ContextLedger) -> None:
    alice = ledger.open_context("alice", "t1", request_id="same")
    bob = ledger.open_context("bob", "t1", request_id="same")

    assert alice.context_id != bob.context_id
    assert _kinds(ledger, "bob") == ["created"]


def test_a_request_id_reused_for_another_kind_of_call_is_refused(
    ledger: ContextLedger,
) -> None:
    context = ledger.open_context("alice", "t1", request_id="r1")

    with pytest.raises(InvalidContextInput, match=r"request_id=.* another kind"):
        ledger.update_context("alice", context.context_id, request_id="r1")
    with pytest.raises(InvalidContextInput, match=r"request_id=.* another kind"):
        ledger.open_context("alice", "t2", request_id="r1")
    assert _kinds(ledger, "alice") == ["created"]


def test_request_ids_are_remembered_across_restarts_and_snapshots(
    durable_url: str,
) -> None:
    with ContextLedger.open(durable_url) as writer:
        first = writer.open_context("alice", "t1", request_id="early")
        for n in range(120):  # past two snapshots
            writer.open_context("alice", "t1", request_id=f"n{n}")

    with ContextLedger.open(durable_url) as reader:
        again = reader.open_context("alice", "t1", request_id="early")
        history = reader.history("alice")

    assert again == first
    assert len(history) == 121


def test_only_the_last_request_ids_of_a_user_are_remembered(
    ledger: ContextLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(domain_contexts, "REQUEST_WINDOW", 3)
    ledger.open_context("alice", "t1", request_id="r0")
    for n in range(1, 4):
        ledger.open_context("alice", "t1", request_id=f"r{n}")

    ledger.open_context("alice", "t1", request_id="r0")  # forgotten: applied
    ledger.open_context("alice", "t1", request_id="r3")  # remembered: not

    assert len(ledger.history("alice")) == 5


def test_a_bad_request_id_is_refused(ledger: ContextLedger) -> None:
    with pytest.raises(InvalidContextInput, match="request_id="):
        ledger.open_context("alice", "t1", request_id="  ")
    assert ledger.history("alice") == []


# Lost replies, through a real proxy in front of the real server.


# A repeat answered by the ledger that recorded the call or by another one on the
# same store, and after an erasure.


def _request_ids(ledger: ContextLedger, user: str) -> list[str | None]:
    return [event.details.get("request_id") for event in ledger.history(user)]


def test_a_repeat_in_the_same_ledger_returns_an_equal_result_and_appends_nothing(
    durable_url: str,
) -> None:
    with ContextLedger.open(durable_url) as ledger:
        first = ledger.open_context("alice", "t1", metadata={"a": 1}, request_id="m1")

        again = ledger.open_context("alice", "t1", metadata={"a": 9}, request_id="m1")
        history = _request_ids(ledger, "alice")

    assert again == first
    assert history == ["m1"]


def test_a_repeat_is_unchanged_by_the_caller_mutating_the_first_result(
    durable_url: str,
) -> None:
    with ContextLedger.open(durable_url) as ledger:
        first = ledger.open_context(
            "alice", "t1", metadata={"a": {"b": [1]}}, request_id="m1"
        )
        expected = first.model_copy(deep=True)
        first.metadata["a"]["b"].append(2)
        first.metadata["c"] = 3

        again = ledger.open_context("alice", "t1", request_id="m1")
        history = _request_ids(ledger, "alice")

    assert again == expected
    assert again.metadata == {"a": {"b": [1]}}
    assert history == ["m1"]


def test_a_repeated_update_and_clears_in_the_same_ledger_append_nothing(
    durable_url: str,
) -> None:
    with ContextLedger.open(durable_url) as ledger:
        one = ledger.open_context("alice", "t1")
        two = ledger.open_context("alice", "t2")
        updated = ledger.update_context(
            "alice", one.context_id, metadata={"n": 1}, request_id="u"
        )
        ledger.clear_context("alice", two.context_id, request_id="c")
        cleared = ledger.clear_user("alice", request_id="all")

        again = ledger.update_context(
            "alice", one.context_id, metadata={"n": 2}, request_id="u"
        )
        ledger.clear_context("alice", two.context_id, request_id="c")
        cleared_again = ledger.clear_user("alice", request_id="all")
        history = _request_ids(ledger, "alice")

    assert again == updated
    assert cleared_again == cleared == 1
    assert history == [None, None, "u", "c", "all"]


def test_a_repeat_in_another_ledger_on_the_same_store_returns_the_first_result(
    durable_url: str,
) -> None:
    with (
        ContextLedger.open(durable_url) as first_process,
        ContextLedger.open(durable_url) as second_process,
    ):
        second_process.active_contexts("alice")  # its cache knows the user, empty
        first = first_process.open_context(
            "alice", "t1", metadata={"a": 1}, request_id="m1"
        )

        again = second_process.open_context("alice", "t1", request_id="m1")
        history = _request_ids(second_process, "alice")

    assert again == first
    assert history == ["m1"]


def test_a_repeat_in_another_ledger_after_later_calls_returns_the_first_result(
    durable_url: str,
) -> None:
    with (
        ContextLedger.open(durable_url) as first_process,
        ContextLedger.open(durable_url) as second_process,
    ):
        first = first_process.open_context(
            "alice", "t1", metadata={"a": 1}, request_id="m1"
        )
        first_process.update_context("alice", first.context_id, metadata={"a": 2})

        again = second_process.open_context("alice", "t1", request_id="m1")
        history = _request_ids(second_process, "alice")

    assert again == first
    assert history == ["m1", None]


def test_a_repeat_after_another_ledger_forgot_the_user_returns_no_erased_data(
    durable_url: str,
) -> None:
    with (
        ContextLedger.open(durable_url) as first_process,
        ContextLedger.open(durable_url) as second_process,
    ):
        first_process.open_context(
            "alice", "t1", metadata={"secret": "s"}, request_id="m1"
        )
        second_process.forget_user("alice")

        again = first_process.open_context("alice", "t1", request_id="m1")
        history = _request_ids(first_process, "alice")

    assert "secret" not in again.metadata
    assert again.erased
    assert history == ["m1", None]


def test_a_repeat_after_the_same_ledger_forgot_the_user_returns_no_erased_data(
    durable_url: str,
) -> None:
    with ContextLedger.open(durable_url) as ledger:
        ledger.open_context("alice", "t1", metadata={"secret": "s"}, request_id="m1")
        ledger.forget_user("alice")

        again = ledger.open_context("alice", "t1", request_id="m1")

    assert "secret" not in again.metadata
    assert again.erased


# A write whose reply is lost.


@pytest.fixture
def proxy(postgres_dsn: str) -> Iterator[CuttingProxy]:
    parts = urlsplit(postgres_dsn)
    cutter = CuttingProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    yield cutter
    cutter.close()


@pytest.fixture
def proxied(postgres_url: str, proxy: CuttingProxy) -> Iterator[ContextLedger]:
    parts = urlsplit(postgres_url)
    url = postgres_url.replace(
        f"@{parts.netloc.split('@')[1]}", f"@127.0.0.1:{proxy.port}"
    )
    with ContextLedger.open(url) as opened:
        yield opened


@pytest.mark.postgres
def test_an_open_whose_commit_reply_is_lost_is_applied_once(
    proxied: ContextLedger, proxy: CuttingProxy
) -> None:
    proxy.armed.set()

    context = proxied.open_context("alice", "t1")

    assert proxy.cuts == 1
    assert _kinds(proxied, "alice") == ["created"]
    assert proxied.get_context("alice", "t1") == context


@pytest.mark.postgres
def test_an_update_and_clears_whose_replies_are_lost_are_applied_once(
    proxied: ContextLedger, proxy: CuttingProxy
) -> None:
    one = proxied.open_context("alice", "t1")
    two = proxied.open_context("alice", "t2")
    three = proxied.open_context("alice", "t3")

    proxy.armed.set()
    updated = proxied.update_context("alice", one.context_id, metadata={"n": 1})
    proxy.armed.set()
    proxied.clear_context("alice", two.context_id)
    proxy.armed.set()
    cleared = proxied.clear_user("alice")

    assert proxy.cuts == 3
    assert updated.metadata == {"n": 1}
    assert cleared == 2
    assert _kinds(proxied, "alice") == [
        "created",
        "created",
        "created",
        "updated",
        "cleared",
        "cleared",
        "cleared",
    ]
    assert {e.context_id for e in proxied.history("alice")[-2:]} == {
        one.context_id,
        three.context_id,
    }


@pytest.mark.postgres
def test_a_lost_reply_with_the_database_gone_is_unknown_then_settled_by_a_repeat(
    proxied: ContextLedger, proxy: CuttingProxy
) -> None:
    context = proxied.open_context("alice", "t1")
    proxy.stay_down = True
    proxy.armed.set()

    with pytest.raises(StorageUnavailable) as caught:
        proxied.clear_context("alice", context.context_id, request_id="bye")
    proxy.stay_down = proxy.refuse = False
    _when_back(
        lambda: proxied.clear_context("alice", context.context_id, request_id="bye")
    )

    assert caught.value.unknown
    assert "unknown whether the write was stored" in str(caught.value)
    assert "appended nothing" not in str(caught.value)
    assert _kinds(proxied, "alice") == ["created", "cleared"]
    with pytest.raises(ContextNotFound):
        proxied.clear_context("alice", context.context_id, request_id="other")


@pytest.mark.postgres
def test_a_lost_reply_to_a_commit_still_running_is_settled_not_called_nothing(
    proxied: ContextLedger, proxy: CuttingProxy, postgres_url: str
) -> None:
    proxied.open_context("alice", "t1")
    schema = postgres_url.rpartition("schema=")[2]
    # Commits of this schema's events take a second: the reply is lost while the
    # first try is still committing, so a read at once would not see its event.
    execute_sql(
        postgres_url,
        f'CREATE FUNCTION "{schema}".slow_commit() RETURNS trigger LANGUAGE plpgsql '
        "AS $$ BEGIN PERFORM pg_sleep(1); RETURN NULL; END $$",
    )
    execute_sql(
        postgres_url,
        f'CREATE CONSTRAINT TRIGGER slow AFTER INSERT ON "{schema}".ctxledger_events '
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION "
        f'"{schema}".slow_commit()',
    )
    proxy.linger = 0.0
    proxy.armed.set()

    context = proxied.open_context("alice", "t2")

    assert proxy.cuts == 1
    assert _kinds(proxied, "alice") == ["created", "created"]
    assert proxied.get_context("alice", "t2") == context
