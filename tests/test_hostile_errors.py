"""Hostile values at the ledger's edges: exports, URLs, output files and times.

Each gives a report or a typed ``LedgerError`` whose message says what to do, through
the public API and the CLI (an exit status and one line, never a traceback).
"""

import json
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NoReturn

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import (
    ContextLedger,
    ExportReport,
    InvalidContextInput,
    LedgerConfigError,
    verify_export,
)
from ledger.domain.hashing import canonical_encoding
from projections import Projections
from tests.helpers import CTXLEDGER, run

PASSWORD = "hunter2"
OUT_OF_UTC = ("9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+05:00")
EDGES_OF_UTC = (
    "9999-12-31T23:59:59.999999Z",
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59+23:59",
    "0001-01-01T23:58:00-00:01",
)
TIME_OPTIONS = (
    ("history", "alice", "--since"),
    ("history", "alice", "--until"),
    ("audit", "alice", "--since"),
    ("audit", "alice", "--until"),
    ("audit", "alice", "--as-of"),
    ("export", "alice", "--out", "a.jsonl", "--since"),
    ("export", "alice", "--out", "a.jsonl", "--until"),
)


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


@pytest.fixture
def url_with_alice(durable_url: str) -> str:
    with ContextLedger.open(durable_url) as ledger:
        ledger.open_context("alice", "t1")
    return durable_url


@pytest.fixture
def projected_url(url_with_alice: str, tmp_path: Path) -> str:
    """A ledger of alice whose views have caught up."""
    assert run("--db", url_with_alice, "project", cwd=tmp_path).returncode == 0
    return url_with_alice


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _with_line(path: Path, index: int, record: dict[str, Any]) -> bytes:
    lines = _lines(path)
    lines[index] = canonical_encoding(record) + b"\n"
    return b"".join(lines)


def _verified(path: Path, data: bytes) -> ExportReport:
    path.write_bytes(data)
    return verify_export(path)


def _one_line_error(result: subprocess.CompletedProcess[str], name: str) -> str:
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{name}: ")
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr


# verify_export: any bytes give a report.


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
    assert "is not a regular file" in _one_line_error(refused, "InvalidContextInput")


# Database URLs: every malformed one is a LedgerConfigError that names the problem.

BAD_URLS = [
    ("postgresql://postgres@[::1/test", "IPv6 host needs both brackets"),
    ("postgresql://postgres@ex\uff0fample/test", "Unicode normalization"),
    ("sqlite:///a%00b.db", "holds a NUL character"),
    ("sqlite:///a.db?timeout=\u00b2", "whole number of seconds"),
    ("sqlite:///a.db?timeout=99999999999999999999", "at most 86400"),
    ("sqlite:///" + "a" * 5000 + "/x.db", "cannot be used: File name too long"),
    ("postgresql://postgres@127.0.0.1/te%00st", "database name .* NUL character"),
    ("postgresql://po%00stgres@127.0.0.1/test", "user .* NUL character"),
    ("postgresql://postgres@127.0.0.1/test?host=/tmp%00x", "host .* NUL character"),
    ("postgresql://postgres@12%00/test", "host .* NUL character"),
    ("postgresql://postgres@127.0.0.1:99999/test", "not a number from 1 to 65535"),
    ("postgresql://postgres@127.0.0.1:abc/test", "not a number from 1 to 65535"),
    ("postgresql://postgres@127.0.0.1:0/test", "not a number from 1 to 65535"),
    ("postgresql://postgres@127.0.0.1:/test", "not a number from 1 to 65535"),
    ("postgresql://postgres@/test", "has no host"),
    ("postgresql://postgres@:5432/test", "has no host"),
    ("postgresql://postgres@127.0.0.1/test#x", "has a '@' after its host, or a '#'"),
    ("postgresql://postgres@127.0.0.1/test?pool_size=10001", "at most 1000"),
    ("postgresql://postgres@127.0.0.1/test?pool_timeout=" + "9" * 30, "at most 86400"),
    ("mysql://root@localhost/db", "unsupported database URL"),
    ("SQLITE", "unsupported database URL"),
]


@pytest.mark.parametrize(("url", "problem"), BAD_URLS)
def test_a_malformed_url_is_a_configuration_error(url: str, problem: str) -> None:
    with pytest.raises(LedgerConfigError, match=problem):
        ContextLedger.open(url)
    with pytest.raises(LedgerConfigError, match=problem):
        Projections.open(url)


@pytest.mark.parametrize("url", [3, b"sqlite:///x.db", ["memory://"], 1.5])
def test_a_url_that_is_not_a_str_is_a_configuration_error(url: object) -> None:
    with pytest.raises(LedgerConfigError, match="is not a str; pass a database URL"):
        Projections.open(url)  # type: ignore[arg-type]
    with pytest.raises(LedgerConfigError, match="is not a str; pass a database URL"):
        ContextLedger.open(url)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://app:{PASSWORD}@[::1/test",
        f"postgresql://app:{PASSWORD}@ex\uff0fample/test",
        f"postgresql://app:hun/ter2@127.0.0.1/test?x={PASSWORD}@",
        "postgresql://app:hun/ter2@127.0.0.1/test",
        "postgresql://app:hun?ter2@127.0.0.1/test",
        "postgresql://app:hun#ter2@127.0.0.1/test",
        "postgresql://app:hunter2%00@127.0.0.1/test",
        f"postgresql://app:{PASSWORD}@127.0.0.1:99999/test",
        f"postgresql://app:{PASSWORD}@/test",
        f"postgresql://app:{PASSWORD}@127.0.0.1/t%00",
        f"mysql://app:{PASSWORD}@[::1/test",
        f"postgresql://app:{PASSWORD}@127.0.0.1/test\x00",
    ],
)
def test_a_password_never_shows_in_the_error_of_a_malformed_url(url: str) -> None:
    with pytest.raises(LedgerConfigError) as caught:
        ContextLedger.open(url)

    message = str(caught.value)
    assert "***" in message
    for piece in (PASSWORD, "hun", "ter2"):
        assert piece not in message


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("postgresql://postgres:hunter2@[::1/test", "IPv6 host"),
        ("sqlite:///a%00b.db", "NUL character"),
        ("postgresql://postgres@127.0.0.1:99999/test", "1 to 65535"),
        ("postgresql://postgres@/test", "has no host"),
        ("ftp://x", "unsupported database URL"),
    ],
)
@pytest.mark.parametrize("given", ["--db", "CTXLEDGER_URL"])
@pytest.mark.parametrize(
    "command",
    [
        ("status",),
        ("history", "alice"),
        ("audit", "alice", "--as-of", "2026-01-01T00:00:00Z"),
        ("export", "alice", "--out", "a.jsonl"),
        ("report", "alice", "--out", "a.html"),
    ],
    ids=["status", "history", "audit-as-of", "export", "report"],
)
def test_the_cli_refuses_a_malformed_url_in_one_line(
    tmp_path: Path, url: str, problem: str, given: str, command: tuple[str, ...]
) -> None:
    environment = {k: v for k, v in os.environ.items() if k != "CTXLEDGER_URL"}
    if given == "--db":
        args = [CTXLEDGER, "--db", url, *command]
    else:
        args, environment["CTXLEDGER_URL"] = [CTXLEDGER, *command], url

    result = subprocess.run(
        args,
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert result.returncode == 1
    assert problem in _one_line_error(result, "LedgerConfigError")
    assert "hunter2" not in result.stderr
    assert list(tmp_path.iterdir()) == []


# Files that cannot be written: typed errors, and nothing half-written is left.


def _skip_unless_ci(reason: str) -> NoReturn:
    """Skips with ``reason``; under CI=true (root, mount present) it is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A folder on a real 64 KiB tmpfs, filled to its last 4 KiB (needs root)."""
    mount, umount = shutil.which("mount"), shutil.which("umount")
    folder = tmp_path / "full"
    folder.mkdir()
    if mount is None or umount is None:
        _skip_unless_ci("mount and umount are not installed: no full disk to test")
    mounted = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        _skip_unless_ci(
            f"a tmpfs cannot be mounted here (needs root): {mounted.stderr}"
        )
    try:
        (folder / "filler").write_bytes(b"x" * 56 * 1024)
        (folder / "kept.jsonl").write_bytes(b"an older file\n")
        yield folder
    finally:
        subprocess.run([umount, str(folder)], check=True)


def _history_of_some_size(url: str) -> None:
    with ContextLedger.open(url) as ledger:
        for thread in range(6):
            ledger.open_context("alice", f"t{thread}", metadata={"note": "x" * 2000})


@pytest.mark.parametrize(
    ("out", "problem"),
    [
        ("/proc/version", r"cannot be written: .* \(no file can be created in /proc\)"),
        ("{tmp}", "is a folder"),
        ("{tmp}/no/such/x.jsonl", "is in a folder that does not exist"),
        ("{tmp}/file.txt/x.jsonl", "which is not a folder"),
        ("{tmp}/pipe", "is not a regular file"),
        ("{tmp}/a\x00b.jsonl", "holds a NUL character"),
    ],
)
def test_an_export_to_an_unwritable_place_is_refused_and_leaves_nothing(
    url_with_alice: str, tmp_path: Path, out: str, problem: str
) -> None:
    target = tmp_path / "target"
    target.mkdir()
    (target / "file.txt").write_text("kept\n")
    os.mkfifo(target / "pipe")
    before = sorted(target.iterdir())

    with (
        ContextLedger.open(url_with_alice) as ledger,
        pytest.raises(InvalidContextInput, match=problem) as caught,
    ):
        ledger.export("alice", out.format(tmp=target))

    assert caught.value.field == "path"
    assert sorted(target.iterdir()) == before
    assert stat.S_ISFIFO((target / "pipe").stat().st_mode)


@pytest.mark.parametrize("out", [3, b"x.jsonl", None])
def test_an_export_path_of_the_wrong_type_is_a_typed_error(
    sqlite_url: str, out: object
) -> None:
    with (
        ContextLedger.open(sqlite_url) as ledger,
        pytest.raises(InvalidContextInput, match="is not a path"),
    ):
        ledger.export("alice", out)  # type: ignore[arg-type]


def test_an_export_to_a_full_disk_is_refused_and_keeps_the_older_file(
    durable_url: str, full_disk: Path
) -> None:
    _history_of_some_size(durable_url)

    with (
        ContextLedger.open(durable_url) as ledger,
        pytest.raises(InvalidContextInput, match="No space left on device"),
    ):
        ledger.export("alice", full_disk / "kept.jsonl")

    assert sorted(p.name for p in full_disk.iterdir()) == ["filler", "kept.jsonl"]
    assert (full_disk / "kept.jsonl").read_bytes() == b"an older file\n"


@pytest.mark.parametrize("command", ["export", "report"])
def test_the_cli_writes_nothing_to_a_full_disk(
    durable_url: str, full_disk: Path, command: str
) -> None:
    _history_of_some_size(durable_url)
    out = full_disk / f"alice.{'jsonl' if command == 'export' else 'html'}"

    result = run(
        "--db", durable_url, command, "alice", "--out", str(out), cwd=full_disk
    )

    assert result.returncode == 1
    error = _one_line_error(result, "InvalidContextInput")
    assert error.startswith("InvalidContextInput: out='/")
    assert "cannot be written: No space left on device" in error
    assert sorted(p.name for p in full_disk.iterdir()) == ["filler", "kept.jsonl"]


@pytest.mark.parametrize("command", ["export", "report"])
def test_the_cli_refuses_a_pipe_as_its_out_file(
    url_with_alice: str, tmp_path: Path, command: str
) -> None:
    os.mkfifo(tmp_path / "pipe")

    result = run(
        "--db", url_with_alice, command, "alice", "--out", "pipe", cwd=tmp_path
    )

    assert result.returncode == 1
    assert "out='pipe' is not a regular file" in _one_line_error(
        result, "InvalidContextInput"
    )
    assert stat.S_ISFIFO((tmp_path / "pipe").stat().st_mode)


# Time options at the limits of datetime: a typed error when out of range in UTC,
# an answer at the very edges.


@pytest.mark.parametrize("value", OUT_OF_UTC)
@pytest.mark.parametrize("args", TIME_OPTIONS, ids=" ".join)
def test_a_time_option_out_of_range_in_utc_is_one_typed_line(
    url_with_alice: str, tmp_path: Path, args: tuple[str, ...], value: str
) -> None:
    result = run("--db", url_with_alice, *args, value, cwd=tmp_path)

    assert result.returncode == 1
    error = _one_line_error(result, "InvalidContextInput")
    assert f"='{value}' is out of range once converted to UTC" in error
    assert not (tmp_path / "a.jsonl").exists()


@pytest.mark.parametrize("value", EDGES_OF_UTC)
@pytest.mark.parametrize("args", TIME_OPTIONS, ids=" ".join)
def test_a_time_option_at_the_edge_of_utc_is_answered(
    projected_url: str, tmp_path: Path, args: tuple[str, ...], value: str
) -> None:
    result = run("--db", projected_url, *args, value, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    if args[0] == "export":
        assert verify_export(tmp_path / "a.jsonl").intact


@pytest.mark.parametrize("value", ["", "2026-13-01", "nan", "x" * 100_000])
def test_a_time_option_that_is_not_a_time_is_a_short_usage_error(
    url_with_alice: str, tmp_path: Path, value: str
) -> None:
    result = run(
        "--db", url_with_alice, "audit", "alice", "--as-of", value, cwd=tmp_path
    )

    assert result.returncode == 2
    assert "is not an ISO 8601 time" in result.stderr
    assert len(result.stderr) < 1000
