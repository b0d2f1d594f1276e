"""Hostile values through every public call: each failure is a LedgerError, a
refused call appends nothing, and the chain holds after every accepted one.

Values: odd unicode and lone surrogates, NUL, huge and deeply nested values,
subclasses of builtins with odd ``__str__``/``__eq__``/``__hash__``, NaN and
infinities, bools for ints, datetimes at the ends of the calendar with odd
offsets, naive datetimes, non-str keys. Runs on SQLite and PostgreSQL with a
bounded number of examples (FUZZ_EXAMPLES).
"""

import contextlib
import enum
import os
import string
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ledger import ContextLedger, LedgerError, verify_export
from projections import Projections
from tests.helpers import run

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "120"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


class Shade(enum.StrEnum):
    RED = "red"


class Count(enum.IntEnum):
    ONE = 1


class Odd(str):
    """A str whose other faces disagree with its content."""

    def __str__(self) -> str:
        return "odd"

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return 7


class Big(int):
    def __str__(self) -> str:
        return "big"

    def __index__(self) -> int:
        return 2**70


class Drifting(float):
    def __repr__(self) -> str:
        return "nan"

    def __float__(self) -> float:
        return float("inf")


class Failing(dict[str, Any]):
    def items(self) -> Any:
        raise RuntimeError("items")

    def __getitem__(self, key: str) -> Any:
        raise KeyError(key)


texts = st.text(
    alphabet=st.characters(codec=None, categories=None),  # surrogates included
    max_size=40,
)
names = st.sampled_from(["alice", "bob", "t1", "t2", "run-1", "req-1"])
ids: st.SearchStrategy[Any] = st.one_of(
    names,
    texts,
    st.sampled_from(["", " alice", "none", "{user_id}", "a\x00b", "\udcff", "x" * 300]),
    st.builds(Odd, names),
    st.builds(Shade, st.just("red")),
    st.integers(),
    st.booleans(),
    st.none(),
    st.binary(max_size=8),
)
EARLIEST = datetime.min  # noqa: DTZ901  (naive bounds: hypothesis adds zones)
LATEST = datetime.max  # noqa: DTZ901
offsets = st.integers(min_value=-23 * 60 + 1, max_value=23 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
# Typed Any: the calls are given values of the wrong types on purpose.
times: st.SearchStrategy[Any] = st.one_of(
    st.datetimes(timezones=st.just(UTC)),
    st.datetimes(
        min_value=EARLIEST, max_value=EARLIEST + timedelta(days=1), timezones=offsets
    ),
    st.datetimes(
        min_value=LATEST - timedelta(days=1),
        max_value=LATEST,
        timezones=offsets,
    ),
    st.datetimes(),  # naive
    st.sampled_from(["2026-01-01", 0, 1.5, None]),
)
numbers = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.builds(Big, st.integers(0, 10)),
    st.builds(Drifting, st.floats(allow_nan=False, allow_infinity=False)),
    st.builds(Count, st.just(1)),
    st.none(),
    texts,
)
leaves = st.one_of(
    st.none(), st.booleans(), numbers, texts, st.builds(Odd, texts), st.binary()
)
keys = st.one_of(
    texts, st.builds(Odd, texts), st.builds(Shade, st.just("red")), st.integers()
)
nested = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(keys, inner, max_size=3),
        st.tuples(inner, inner),
    ),
    max_leaves=30,
)
metadata = st.one_of(
    st.none(),
    st.dictionaries(keys, nested, max_size=4),
    st.dictionaries(names, st.text(string.ascii_letters, max_size=5), max_size=3),
    st.builds(Failing),
    nested,
)


def _call(
    ledger: ContextLedger, data: st.DataObject, folder: Path
) -> Callable[[], object]:
    """One public call of the ledger with values that may be hostile."""
    user = data.draw(ids)
    known = [c.context_id for u in ("alice", "bob") for c in ledger.active_contexts(u)]
    # An index, not sampled_from(known): what is drawn must not depend on state.
    pick = data.draw(st.one_of(ids, st.integers(0, 9).map(lambda i: ("known", i))))
    is_known = isinstance(pick, tuple) and pick[0] == "known"
    context: Any = known[pick[1] % len(known)] if is_known and known else pick

    def changes() -> dict[str, Any]:
        return {
            "run_id": data.draw(st.one_of(st.none(), ids)),
            "metadata": data.draw(metadata),
            "request_id": data.draw(st.one_of(st.none(), ids)),
        }

    calls: dict[str, Callable[[], object]] = {
        "open": lambda: ledger.open_context(
            user, data.draw(ids), ttl_seconds=data.draw(numbers), **changes()
        ),
        "update": lambda: ledger.update_context(user, context, **changes()),
        "clear": lambda: ledger.clear_context(
            user, context, reason=data.draw(st.one_of(texts, ids))
        ),
        "clear_user": lambda: ledger.clear_user(
            user, reason=data.draw(st.one_of(texts, ids))
        ),
        "get": lambda: ledger.get_context(user, data.draw(ids)),
        "active": lambda: ledger.active_contexts(user),
        "history": lambda: ledger.history(
            user,
            since=data.draw(times),
            until=data.draw(times),
            limit=data.draw(numbers),
        ),
        "context_history": lambda: ledger.context_history(user, context),
        "as_of": lambda: ledger.contexts_as_of(user, data.draw(times)),
        "verify": lambda: ledger.verify_chain(data.draw(st.one_of(st.none(), ids))),
        "chain_size": ledger.chain_size,
        "expire_due": ledger.expire_due,
        "export": lambda: ledger.export(
            user,
            cast(
                Any,
                data.draw(
                    st.one_of(
                        st.just(str(folder / "export.jsonl")),
                        st.just(folder / "no-such-folder" / "x.jsonl"),
                        st.sampled_from([None, 3, b"x.jsonl", "", str(folder)]),
                    )
                ),
            ),
            since=data.draw(st.one_of(st.none(), times)),
        ),
        "changes": lambda: ledger.changes(
            data.draw(st.one_of(st.none(), ids)),
            after=data.draw(st.one_of(st.none(), numbers)),
        ).poll(),
    }
    return calls[data.draw(st.sampled_from(sorted(calls)))]


@pytest.fixture
def opened(durable_url: str) -> Iterator[ContextLedger]:
    with ContextLedger.open(durable_url) as ledger:
        ledger.open_context("alice", "t1", ttl_seconds=3600, metadata={"k": "v"})
        ledger.open_context("bob", "t2")
        yield ledger


@FUZZ
@given(data=st.data())
def test_every_ledger_call_fails_typed_appends_nothing_when_refused_and_keeps_the_chain(
    opened: ContextLedger, data: st.DataObject, tmp_path: Path
) -> None:
    call = _call(opened, data, tmp_path)
    before = opened.chain_size()

    try:
        call()
    except LedgerError as refused:
        event(f"refused: {type(refused).__name__}")
        assert opened.chain_size() == before
    else:
        event("accepted")
        report = opened.verify_chain()
        assert report.holds, report.broken


view_names: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.lists(st.sampled_from(["active", "audit", "continuity"]), max_size=3),
    st.lists(ids, max_size=2),
    ids,
)


@FUZZ
@given(data=st.data())
def test_every_view_query_fails_typed(
    durable_url: str, opened: ContextLedger, data: st.DataObject
) -> None:
    with Projections.open(durable_url) as views:
        views.catch_up()
        which = data.draw(
            st.sampled_from(
                [
                    "active_contexts",
                    "active_context",
                    "count_active",
                    "expiring_before",
                    "audit_rows",
                    "continuity",
                    "catch_up",
                    "verify",
                    "status",
                ]
            )
        )
        calls: dict[str, Callable[[], object]] = {
            "active_contexts": lambda: views.active_contexts(
                data.draw(st.one_of(st.none(), ids)), limit=data.draw(numbers)
            ),
            "active_context": lambda: views.active_context(data.draw(ids)),
            "count_active": lambda: views.count_active(
                data.draw(st.one_of(st.none(), ids))
            ),
            "expiring_before": lambda: views.expiring_before(data.draw(times)),
            "audit_rows": lambda: views.audit_rows(
                data.draw(st.one_of(st.none(), ids)),
                since=data.draw(st.one_of(st.none(), times)),
                until=data.draw(st.one_of(st.none(), times)),
            ),
            "continuity": lambda: views.continuity(
                data.draw(st.one_of(st.none(), ids))
            ),
            "catch_up": lambda: views.catch_up(data.draw(view_names)),
            "verify": lambda: views.verify(data.draw(view_names)),
            "status": views.status,
        }
        with contextlib.suppress(LedgerError):  # any other error fails the test
            calls[which]()


@FUZZ
@given(
    content=st.one_of(
        st.binary(max_size=300),
        st.lists(texts, max_size=4).map(
            lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")
        ),
        st.sampled_from(
            [b"", b"1e400\n", b'{"format": 1e400}\n', b"[" * 5000, b"NaN\n"]
        ),
    )
)
def test_verify_export_reports_on_any_bytes(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "export.jsonl"
    path.write_bytes(content)

    report = verify_export(path)  # any bytes in a regular file: a report

    assert not report.intact


CLI_ARGUMENTS = st.lists(
    st.one_of(
        st.text(
            alphabet=st.characters(codec="utf-8", exclude_characters="\x00"),
            max_size=20,
        ),
        st.sampled_from(
            ["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00", "-1", "1e400"]
        ),
    ),
    min_size=1,
    max_size=3,
)


@settings(FUZZ, max_examples=max(EXAMPLES // 10, 5))
@given(
    command=st.sampled_from(
        [
            ["history"],
            ["history", "--since"],
            ["active"],
            ["audit", "--as-of"],
            ["continuity", "--user"],
            ["report"],
            ["verify-export"],
            ["verify", "--chain", "--user"],
            ["export"],
        ]
    ),
    arguments=CLI_ARGUMENTS,
)
def test_the_command_line_answers_hostile_arguments_without_a_traceback(
    durable_url: str,
    opened: ContextLedger,
    tmp_path: Path,
    command: list[str],
    arguments: list[str],
) -> None:
    done = run("--db", durable_url, *command, *arguments, cwd=tmp_path)

    assert done.returncode in (0, 1, 2), done.stderr
    assert "Traceback" not in done.stderr, done.stderr
