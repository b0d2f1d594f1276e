"""verify_export on hostile input: any bytes, any mutation of a real export and any
JSON value in any field give a report (or a typed error for a path that names no
file), through the public API and ``ctxledger verify-export``, never a traceback."""

import json
import os
import re
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import ContextLedger, ExportReport, InvalidContextInput, verify_export
from ledger._domain.hashing import canonical_encoding
from tests.helpers import one_line_error, run


@pytest.fixture
def export(durable_url: str, tmp_path: Path) -> Path:
    """A real export of alice: three contexts, a reuse, an update and a clear."""
    path = tmp_path / "alice.jsonl"
    with ContextLedger.open(durable_url) as ledger:
        first = ledger.open_context("alice", "t1", metadata={"n": 1, "x": [1.5]})
        ledger.open_context("alice", "t1", run_id="r2")
        ledger.update_context("alice", first.context_id, metadata={"y": {"z": "é"}})
        ledger.open_context("alice", "t2")
        ledger.clear_user("alice", reason="done")
        ledger.export("alice", path)
    return path


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _with_line(path: Path, index: int, record: dict[str, Any]) -> bytes:
    lines = _lines(path)
    lines[index] = canonical_encoding(record) + b"\n"
    return b"".join(lines)


def _verified(path: Path, data: bytes) -> ExportReport:
    path.write_bytes(data)
    return verify_export(path)


@pytest.mark.parametrize(
    ("index", "field"),
    [(0, rb'"n":1'), (0, rb'"version":1'), (-1, rb'"count":6')],
    ids=["metadata", "version", "manifest"],
)
def test_a_number_beyond_a_float_is_not_intact(
    export: Path, index: int, field: bytes
) -> None:
    lines = _lines(export)
    assert field in lines[index]
    lines[index] = lines[index].replace(field, field[:-1] + b"1e400", 1)

    report = _verified(export, b"".join(lines))

    assert report.fault is not None
    assert report.fault.fault == "altered"
    assert "1e400" in report.fault.detail


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"\xff\xfe{}\n", "not JSON: 'utf-8' codec can't decode"),
        (b'{"manifest":{"count":3', "does not end with a newline"),
        (b'{"a":' + b"9" * 5000 + b"}\n", "out of the signed 64-bit range"),
        (b'{"a":9223372036854775808}\n', "out of the signed 64-bit range"),
        (b'{"a":-9223372036854775809}\n', "out of the signed 64-bit range"),
        (b"[" * 100_000 + b"]" * 100_000 + b"\n", "not JSON"),
        (b'{"a":' * 500 + b"1" + b"}" * 500 + b"\n", "nests deeper than 64"),
        (b'{"a":NaN}\n', "NaN is not allowed"),
        (b'{"a":-Infinity}\n', "-Infinity is not allowed"),
        (b'{"a":1e999}\n', "out of range"),
        (b'"manifest"\n', "not a JSON object"),
        (b"[1]\n", "not a JSON object"),
        (b"\n", "not JSON"),
        (b"", "the file is empty"),
        (b'{"a":"\\ud800"}\n', "cannot be encoded"),
    ],
    ids=[
        "invalid-utf8",
        "truncated",
        "5000-digit-int",
        "int64-max-plus-1",
        "int64-min-minus-1",
        "deep-arrays",
        "deep-objects",
        "nan",
        "minus-infinity",
        "1e999",
        "a-string",
        "an-array",
        "an-empty-line",
        "an-empty-file",
        "a-lone-surrogate",
    ],
)
def test_hostile_bytes_give_a_report_with_the_fault(
    tmp_path: Path, body: bytes, detail: str
) -> None:
    report = _verified(tmp_path / "hostile.jsonl", body)

    assert report.fault is not None
    assert detail in report.fault.detail
    assert report.fault.line == 1


@pytest.mark.parametrize(
    ("index", "field", "value"),
    [
        (0, "occurred_at", "9999-12-31T23:59:59-05:00"),
        (0, "occurred_at", "0001-01-01T00:00:00+05:00"),
        (-1, "since", "9999-12-31T23:59:59-05:00"),
        (-1, "exported_at", "0001-01-01T00:00:00+05:00"),
    ],
)
def test_a_time_beyond_the_years_of_utc_is_not_intact(
    export: Path, index: int, field: str, value: str
) -> None:
    record = json.loads(_lines(export)[index])
    if index == -1:
        record["manifest"][field] = value
    else:
        record[field] = value

    report = _verified(export, _with_line(export, index, record))

    assert report.fault is not None
    assert report.fault.fault == "altered"
    assert "date value out of range" in report.fault.detail


def test_an_export_of_the_widest_period_verifies(
    durable_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "all.jsonl"
    with ContextLedger.open(durable_url) as ledger:
        ledger.open_context("alice", "t1")
        ledger.export(
            "alice",
            path,
            since=datetime(1, 1, 1, 5, tzinfo=timezone(timedelta(hours=5))),
            until=datetime.max.replace(tzinfo=UTC),
        )

    report = verify_export(path)

    assert report.intact, report.fault
    assert report.manifest is not None
    assert report.manifest.since == datetime.min.replace(tzinfo=UTC)


def test_a_path_that_names_no_export_file_is_a_typed_error(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    cases: list[tuple[object, str]] = [
        (tmp_path / "absent.jsonl", "does not exist"),
        (tmp_path, "is a folder"),
        (tmp_path / "pipe", "is not a regular file"),
        ("/dev/zero", "is not a regular file"),
        (f"{tmp_path}/a\x00b.jsonl", "holds a NUL character"),
        ("", "is empty"),
        (3, "is not a path"),
        (b"/tmp/x.jsonl", "is not a path"),
        (None, "is not a path"),
    ]

    for path, problem in cases:
        with pytest.raises(InvalidContextInput, match=problem) as caught:
            verify_export(path)  # type: ignore[arg-type]
        assert caught.value.field == "path"


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.binary(max_size=4000))
def test_random_bytes_give_a_report(tmp_path: Path, data: bytes) -> None:
    report = _verified(tmp_path / "random.jsonl", data)

    assert isinstance(report, ExportReport)
    assert not report.intact


_HOSTILE_TOKENS = [
    b"1e400",
    b"NaN",
    b"-Infinity",
    b"9" * 40,
    b"9223372036854775808",
    b'"\\ud800"',
    b'"9999-12-31T23:59:59-05:00"',
    b'"0001-01-01T00:00:00+05:00"',
    b"[" * 100 + b"]" * 100,
    b'{"a":' * 100 + b"1" + b"}" * 100,
    b"[" * 2000,
    b"\xff",
    b"\n",
    b'{"manifest":{}}',
    b"null",
    b"1.0",
]
# A scalar value after a key: where a hostile token replaces a value whole.
_VALUE = re.compile(rb'":("(?:[^"\\]|\\.)*"|-?[0-9][0-9.eE+-]*|true|false|null)')


@st.composite
def _mutations(draw: st.DrawFn, original: bytes) -> bytes:
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        kind = draw(
            st.sampled_from(["byte", "insert", "delete", "token", "value", "lines"])
        )
        values = list(_VALUE.finditer(data))
        if kind == "value" and values:
            value = draw(st.sampled_from(values))
            data[value.start(1) : value.end(1)] = draw(st.sampled_from(_HOSTILE_TOKENS))
        elif kind == "byte" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=20))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 200))]
        elif kind == "token":
            size = draw(st.integers(0, 12))
            data[at : at + size] = draw(st.sampled_from(_HOSTILE_TOKENS))
        else:
            lines = bytes(data).splitlines(keepends=True) or [b""]
            order = draw(st.permutations(range(len(lines))))
            kept = draw(st.integers(0, len(lines)))
            data = bytearray(b"".join(lines[i] for i in order[:kept]))
    return bytes(data)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_random_mutations_of_an_export_give_a_report(
    export: Path, tmp_path: Path, data: st.DataObject
) -> None:
    original = export.read_bytes()
    mutated = data.draw(_mutations(original))

    report = _verified(tmp_path / "mutated.jsonl", mutated)

    assert report.intact == (mutated == original), report.fault


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=30,
)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_any_json_value_in_any_field_of_an_export_gives_a_report(
    export: Path, tmp_path: Path, data: st.DataObject
) -> None:
    lines = _lines(export)
    index = data.draw(st.integers(0, len(lines) - 1))
    record = json.loads(lines[index])
    body = record["manifest"] if index == len(lines) - 1 else record
    body[data.draw(st.sampled_from(sorted(body)))] = data.draw(_JSON)
    mutated = _with_line(export, index, record)

    report = _verified(tmp_path / "field.jsonl", mutated)

    assert report.intact == (mutated == export.read_bytes()), report.fault


def test_verify_export_command_reports_hostile_bytes_and_bad_paths(
    tmp_path: Path,
) -> None:
    surrogate = tmp_path / "surrogate.jsonl"
    surrogate.write_bytes(b'{"a":"\\ud800"}\n')
    os.mkfifo(tmp_path / "pipe")

    reported = run("verify-export", str(surrogate), cwd=tmp_path)
    refused = run("verify-export", str(tmp_path / "pipe"), cwd=tmp_path)

    assert reported.returncode == 1
    assert "NOT INTACT: line 1: altered: the line cannot be encoded" in reported.stdout
    assert "Traceback" not in reported.stderr
    assert refused.returncode == 1
    assert "is not a regular file" in one_line_error(refused, "InvalidContextInput")
