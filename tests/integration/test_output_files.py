"""Files that cannot be written: an export or a report to a place that is no file, a
path of the wrong type, a pipe or a full disk is a typed error (one line from the CLI),
and nothing half-written is left; an older file there is kept."""

import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from ledger import ContextLedger, InvalidContextInput
from tests.helpers import one_line_error, run


@pytest.fixture
def url_with_alice(durable_url: str) -> str:
    with ContextLedger.open(durable_url) as ledger:
        ledger.open_context("alice", "t1")
    return durable_url


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
    error = one_line_error(result, "InvalidContextInput")
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
    assert "out='pipe' is not a regular file" in one_line_error(
        result, "InvalidContextInput"
    )
    assert stat.S_ISFIFO((tmp_path / "pipe").stat().st_mode)


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
