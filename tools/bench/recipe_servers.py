"""The servers of the recipe benchmark: the recipe's app and its feedless floor
under uvicorn, and the CPU and memory of processes read from /proc."""

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from ledger import ContextLedger
from tools.bench.recipe_load import SECRET

RECIPE = Path(__file__).resolve().parents[2] / "docs" / "guide" / "fastapi.md"
MASTER_KEY = "5e" * 32
WORKERS = 2
TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
FEED_CALL = "ledger.changes(user_id, "
NO_FEED = '''

class _NoFeed:
    """The benchmark's floor: a feed that never yields and reads nothing."""

    async def start(self) -> None:
        return None

    async def __aenter__(self) -> "_NoFeed":
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def __aiter__(self) -> "_NoFeed":
        return self

    async def __anext__(self) -> Any:
        await asyncio.Event().wait()


def _no_feed(user_id: str, *, after: int | None) -> _NoFeed:
    return _NoFeed()
'''


def recipe() -> str:
    """The recipe's ``# app.py`` block (docs/guide/fastapi.md), as the tests run it."""
    blocks = [b.split("```", 1)[0] for b in RECIPE.read_text().split("```python\n")]
    (app,) = [block for block in blocks if block.startswith("# app.py\n")]
    return app


def without_feed(app: str) -> str:
    """The same app with its change feed removed."""
    if app.count(FEED_CALL) != 1:
        msg = f"the recipe no longer opens its feed as {FEED_CALL}: update the bench"
        raise RuntimeError(msg)
    return app.replace(FEED_CALL, "_no_feed(user_id, ") + NO_FEED


@dataclass
class Server:
    name: str
    url: str
    address: str
    pid: int
    application_name: str
    """Its PostgreSQL connections' (PGAPPNAME), which tells its backends apart."""

    def workers(self) -> list[int]:
        """The processes that serve: the uvicorn parent's workers (not its
        resource tracker), or the one uvicorn process itself."""
        pids = [int(path.name) for path in Path("/proc").glob("[0-9]*")]
        children = [pid for pid in pids if _stat(pid)[1:2] == [str(self.pid)]]
        spawned = [pid for pid in children if b"spawn_main" in _cmdline(pid)]
        return spawned or [self.pid]

    def conflict_retries(self) -> float:
        """ctxledger_conflict_retries_total of the process that answers /metrics
        (the one process of a single-worker server)."""
        address = f"http://{self.address}/metrics"
        with urllib.request.urlopen(address, timeout=10) as answer:
            text = answer.read().decode()
        for line in text.splitlines():
            if line.startswith("ctxledger_conflict_retries_total "):
                return float(line.split()[1])
        return 0.0


@contextmanager
def serving(
    name: str, app: str, url: str, *, workers: int = WORKERS
) -> Iterator[Server]:
    """``app`` under uvicorn with ``workers`` on ``url``, until the block ends."""
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "app.py").write_text(app)
        with ContextLedger.open(url, master_key=MASTER_KEY):
            pass  # the tables exist before two workers start
        port = _free_port()
        env = {
            **os.environ,
            "CTXLEDGER_URL": url,
            "CTXLEDGER_MASTER_KEY": MASTER_KEY,
            "APP_SECRET": SECRET,
            "PGAPPNAME": f"ctxledger-bench-{name}-{port}",
        }
        command = [sys.executable, "-m", "uvicorn", "app:app", "--app-dir", folder]
        command += ["--workers", str(workers), "--port", str(port)]
        command += ["--log-level", "warning"]
        with Path(folder, "uvicorn.log").open("w") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=log)  # noqa: S603
            try:
                _wait_healthy(port, process, Path(folder, "uvicorn.log"))
                address = f"127.0.0.1:{port}"
                yield Server(name, url, address, process.pid, env["PGAPPNAME"])
            finally:
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _wait_healthy(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/healthz", timeout=1
            ) as answer:
                if answer.status == 200:
                    return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                msg = f"uvicorn did not start:\n{log.read_text()[-3000:]}"
                raise RuntimeError(msg) from None
            time.sleep(0.2)


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (empty if it ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return []


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def cpu_seconds(pids: list[int]) -> float:
    """User and system CPU of the processes, from /proc."""
    ticks = 0
    for pid in pids:
        fields = _stat(pid)
        if fields:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / TICKS


def rss_mb(pids: list[int]) -> float:
    pages = 0
    for pid in pids:
        try:
            pages += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except OSError:
            continue
    return pages * PAGE_SIZE / 2**20


def backend_cpu_seconds(servers: list[Server]) -> dict[int, float]:
    """The CPU of each PostgreSQL backend connected to the servers, by its pid."""
    names = [server.application_name for server in servers]
    dsn = servers[0].url.partition("?")[0]
    with psycopg.connect(dsn) as db:
        rows = db.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = ANY(%s)",
            (names,),
        ).fetchall()
    return {pid: cpu_seconds([pid]) for (pid,) in rows}
