"""The multiprocess mode set up wrong: a ``PROMETHEUS_MULTIPROC_DIR`` that is no
directory is one line from every ``ctxledger`` command; a variable set after
prometheus_client was imported leaves the process its own figures (with a
warning) and refuses only to expose them as every process's; a directory gone
by the time a process exits is no error at exit.

Each case is a process of its own, started with the variable."""

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import CTXLEDGER

SET_TOO_LATE = """
import os, sys
import prometheus_client
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[2]
from ledger import ContextLedger, LedgerConfigError, metrics_exposition
from ledger._metrics import serve
with ContextLedger.open(sys.argv[1]) as ledger:
    ledger.open_context("alice", "t")
opened = {"command": "open_context", "outcome": "ok"}
print(prometheus_client.REGISTRY.get_sample_value("ctxledger_commands_total", opened))
for expose in (metrics_exposition, lambda: serve(0)):
    try:
        expose()
    except LedgerConfigError as error:
        print("refused:", error)
"""
REMOVE_AT_EXIT = """
import shutil, sys
from ledger import ContextLedger
with ContextLedger.open(sys.argv[1]) as ledger, ledger.changes():
    pass
shutil.rmtree(sys.argv[2])
"""


def _run(
    command: list[str], directory: Path | None
) -> subprocess.CompletedProcess[str]:
    """``command`` in a process started with the variable set to ``directory``
    (unset for None)."""
    environment = {
        k: v for k, v in os.environ.items() if k.lower() != "prometheus_multiproc_dir"
    }
    if directory is not None:
        environment["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    return subprocess.run(
        command,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_every_command_says_in_one_line_that_the_directory_is_missing(
    tmp_path: Path,
) -> None:
    done = _run([CTXLEDGER, "version"], tmp_path / "missing")

    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("LedgerConfigError: PROMETHEUS_MULTIPROC_DIR is ")
    assert "which is not a directory: create it" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_import_that_fails_otherwise_shows_its_traceback(tmp_path: Path) -> None:
    halted = (
        "import sys; sys.modules['ctxledger._cli'] = None; "
        "from ctxledger.entry import main; main()"
    )

    done = _run([sys.executable, "-c", halted], tmp_path)

    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert "ModuleNotFoundError: import of ctxledger._cli halted" in done.stderr


def test_a_variable_set_too_late_keeps_the_processs_own_figures_with_a_warning(
    sqlite_url: str, tmp_path: Path
) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()

    done = _run([sys.executable, "-c", SET_TOO_LATE, sqlite_url, str(directory)], None)

    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith(
        "PROMETHEUS_MULTIPROC_DIR was set after prometheus_client was imported, so "
        "this process keeps its figures in memory"
    )
    counted, *refusals = done.stdout.splitlines()
    assert counted == "1.0"
    assert len(refusals) == 2
    for refusal in refusals:
        assert refusal.startswith(
            "refused: PROMETHEUS_MULTIPROC_DIR was set after prometheus_client was "
            "imported"
        )
        assert "its exposition would leave out its own figures" in refusal
    assert list(directory.iterdir()) == []


def test_a_directory_removed_before_the_process_exits_is_no_error_at_exit(
    sqlite_url: str, tmp_path: Path
) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()

    done = _run(
        [sys.executable, "-c", REMOVE_AT_EXIT, sqlite_url, str(directory)], directory
    )

    assert done.returncode == 0, done.stderr
    assert not directory.exists()
    assert done.stderr == ""
