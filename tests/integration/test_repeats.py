"""A repeated request id returns the first call's result and appends nothing,
whether the ledger that recorded the call answers it or another one does."""

from ledger import ContextLedger


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
