"""One scrape of a 2-worker uvicorn app under prometheus_client's multiprocess
mode shows the commands of both workers: an app that serves /metrics with
``ledger.metrics_exposition``, and the FastAPI recipe, on PostgreSQL."""

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import websockets
from prometheus_client.multiprocess import MultiProcessCollector

from tests.metrics_pages import value
from tools.bench.recipe_load import token
from tools.bench.recipe_servers import recipe, serving

pytestmark = pytest.mark.postgres

APP = """
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

from ledger import AsyncContextLedger, metrics_exposition


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with AsyncContextLedger.open(
        os.environ["CTXLEDGER_URL"], master_key=os.environ["CTXLEDGER_MASTER_KEY"]
    ) as ledger:
        app.state.ledger = ledger
        yield


app = FastAPI(lifespan=lifespan)


@app.post("/contexts/{number}")
async def open_context(number: int, request: Request) -> dict[str, int]:
    await request.app.state.ledger.open_context(f"user-{number}", "t")
    return {"pid": os.getpid()}


@app.get("/metrics")
async def metrics(request: Request) -> Response:
    body, content_type = metrics_exposition(request.headers.get("accept"))
    return Response(body, media_type=content_type)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}
"""
_MERGE: Callable[[list[str]], Iterable[Any]] = MultiProcessCollector.merge
"""Adds up the figures in the given files of the multiprocess directory."""
BATCH = 20  # requests at once, so that both workers take some
PATIENCE = 120.0
"""Seconds of requests before the test gives up on a worker that never answers
(on a loaded machine the second worker may start long after the first)."""


@pytest.fixture
def directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty directory of the multiprocess mode, named in the environment
    uvicorn starts with."""
    folder = tmp_path / "prometheus"
    folder.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(folder))
    return folder


def _give_up_after(deadline: float, progress: str) -> None:
    """Fails the test once ``deadline`` has passed with a worker still silent."""
    if time.monotonic() > deadline:
        pytest.fail(
            f"one of the 2 workers has not answered in {PATIENCE:.0f} s of "
            f"requests ({progress}); did it start?"
        )


def _open(address: str, number: int) -> int:
    """Opens a context through the app; the pid of the worker that answered."""
    url = f"http://{address}/contexts/{number}"
    with urllib.request.urlopen(url, data=b"", timeout=30) as answer:  # a POST
        pid: int = json.load(answer)["pid"]
        return pid


def test_one_scrape_counts_the_commands_of_both_workers(
    postgres_url: str, directory: Path
) -> None:
    with serving("multiprocess-metrics", APP, postgres_url) as server:
        answered: list[int] = []
        deadline = time.monotonic() + PATIENCE
        with ThreadPoolExecutor(BATCH) as pool:
            while len(set(answered)) < 2:
                _give_up_after(deadline, f"{len(answered)} answered by {set(answered)}")
                numbers = range(len(answered), len(answered) + BATCH)
                answered += pool.map(lambda n: _open(server.address, n), numbers)
        workers = set(server.workers())
        with urllib.request.urlopen(f"http://{server.address}/metrics") as scrape:
            page = scrape.read().decode()

    assert set(answered) == workers
    assert len(workers) == 2
    opened = {"command": "open_context"}
    calls = len(answered)
    assert value(page, "ctxledger_commands_total", **opened, outcome="ok") == calls
    assert value(page, "ctxledger_events_appended_total", kind="created") == calls
    assert value(page, "ctxledger_command_duration_seconds_count", **opened) == calls


async def _message(address: str, user: str) -> dict[str, Any]:
    """One message of ``user`` to the recipe on a socket of its own; the reply."""
    async with websockets.connect(f"ws://{address}/ws?token={token(user)}") as ws:
        await ws.send(json.dumps({"message_id": "m0", "thread_id": "t"}))
        while True:
            reply: dict[str, Any] = json.loads(
                await asyncio.wait_for(ws.recv(), timeout=30)
            )
            if reply["type"] != "change":
                return reply


async def _all(address: str, users: list[str]) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*[_message(address, user) for user in users]))


def _opened_by(directory: Path, pid: int) -> float:
    """The open_context calls the process ``pid`` counted in its own file."""
    files = [str(path) for path in directory.glob(f"counter_{pid}.db")]
    for family in _MERGE(files):
        for sample in family.samples:
            wanted = {"command": "open_context", "outcome": "ok"}
            if sample.name == "ctxledger_commands_total" and sample.labels == wanted:
                return float(sample.value)
    return 0.0


def test_one_scrape_of_the_recipe_counts_the_messages_of_both_workers(
    postgres_url: str, directory: Path
) -> None:
    with serving("multiprocess-recipe", recipe(), postgres_url) as server:
        replies: list[dict[str, Any]] = []
        by_worker: list[float] = []
        deadline = time.monotonic() + PATIENCE
        while not (len(by_worker) == 2 and all(by_worker)):
            _give_up_after(deadline, f"{len(replies)} messages, counted {by_worker}")
            users = [f"user-{len(replies) + n}" for n in range(BATCH)]
            replies += asyncio.run(_all(server.address, users))
            by_worker = [_opened_by(directory, pid) for pid in server.workers()]
        with urllib.request.urlopen(f"http://{server.address}/metrics") as scrape:
            page = scrape.read().decode()

    assert [reply["type"] for reply in replies] == ["ack"] * len(replies)
    assert len(by_worker) == 2
    assert all(by_worker), by_worker
    opened = {"command": "open_context", "outcome": "ok"}
    assert value(page, "ctxledger_commands_total", **opened) == len(replies)
