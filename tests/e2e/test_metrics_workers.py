"""One scrape of a 2-worker uvicorn app under prometheus_client's multiprocess
mode shows the commands of both workers: the app serves /metrics with
``ledger.metrics_exposition``, on PostgreSQL."""

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.metrics_pages import value
from tools.bench.recipe_servers import serving

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
BATCH = 20  # requests at once, so that both workers take some
MOST = 400  # requests before the test gives up on the second worker


def _open(address: str, number: int) -> int:
    """Opens a context through the app; the pid of the worker that answered."""
    url = f"http://{address}/contexts/{number}"
    with urllib.request.urlopen(url, data=b"", timeout=30) as answer:  # a POST
        pid: int = json.load(answer)["pid"]
        return pid


def test_one_scrape_counts_the_commands_of_both_workers(
    postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "prometheus"
    directory.mkdir()
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(directory))  # for uvicorn
    with serving("multiprocess-metrics", APP, postgres_url) as server:
        answered: list[int] = []
        with ThreadPoolExecutor(BATCH) as pool:
            while len(set(answered)) < 2 and len(answered) < MOST:
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
