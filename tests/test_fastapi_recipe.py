"""The README's FastAPI app, exactly as written, under a real uvicorn with 2 worker
processes on PostgreSQL, driven by real WebSocket clients."""

import asyncio
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from ledger import ContextLedger

pytestmark = pytest.mark.postgres

README = Path(__file__).parent.parent / "README.md"
USERS, THREADS, MESSAGES = 20, 3, 20
RESENT = {4, 9, 15}  # these messages of each thread are sent twice
SECRET = "test-secret"


def _token(user: str) -> str:
    signature = hmac.new(SECRET.encode(), user.encode(), hashlib.sha256).hexdigest()
    return f"{user}.{signature}"


def _recipe() -> str:
    blocks = [b.split("```", 1)[0] for b in README.read_text().split("```python\n")]
    (app,) = [block for block in blocks if block.startswith("# app.py\n")]
    return app


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def server(postgres_url: str, tmp_path: Path) -> Iterator[str]:
    (tmp_path / "app.py").write_text(_recipe())
    with ContextLedger.open(postgres_url):
        pass  # the tables exist before two workers start
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app:app",
            "--app-dir",
            str(tmp_path),
            "--workers",
            "2",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env={**os.environ, "CTXLEDGER_URL": postgres_url, "APP_SECRET": SECRET},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=1) as answer:  # noqa: S310
                if answer.status == 200:
                    break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read() if process.stdout else ""
                pytest.fail(f"uvicorn did not start: {output}")
            time.sleep(0.2)
    yield f"127.0.0.1:{port}"
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
    finally:
        if process.stdout is not None:
            process.stdout.close()


async def _converse(
    address: str, user: str, thread: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Sends the thread's messages (some twice), one at a time; returns the acks
    and every change the socket was pushed."""
    acks: list[dict[str, Any]] = []
    changes: list[dict[str, Any]] = []
    async with websockets.connect(f"ws://{address}/ws?token={_token(user)}") as ws:

        async def answer() -> dict[str, Any]:
            while True:
                received: dict[str, Any] = json.loads(await ws.recv())
                if received["type"] == "change":
                    changes.append(received)
                else:
                    return received

        for n in range(MESSAGES):
            sends = 2 if n in RESENT else 1
            for _ in range(sends):
                await ws.send(
                    json.dumps({"thread_id": thread, "message_id": f"{thread}-m{n}"})
                )
                acks.append(await answer())
        try:  # the changes still on their way
            while True:
                received = json.loads(await asyncio.wait_for(ws.recv(), 1.0))
                changes.append(received)
        except TimeoutError:
            pass
    return acks, changes


def test_the_readme_app_applies_each_message_once_and_pushes_only_the_users_own(
    server: str, postgres_url: str
) -> None:
    async def everyone() -> list[Any]:
        return list(
            await asyncio.gather(
                *[
                    _converse(server, f"user-{u}", f"thread-{t}")
                    for u in range(USERS)
                    for t in range(THREADS)
                ]
            )
        )

    results = asyncio.run(everyone())
    with urllib.request.urlopen(f"http://{server}/metrics", timeout=5) as answer:
        metrics = answer.read().decode()

    for index, (acks, changes) in enumerate(results):
        user, thread = f"user-{index // THREADS}", f"thread-{index % THREADS}"
        assert all(a["type"] == "ack" for a in acks), acks
        assert len({a["context_id"] for a in acks}) == 1  # one context per thread
        by_message: dict[str, set[int]] = defaultdict(set)
        for ack in acks:
            by_message[ack["message_id"]].add(ack["reuse_count"])
        assert all(len(counts) == 1 for counts in by_message.values())  # repeats
        assert sorted(c for (c,) in by_message.values()) == list(range(MESSAGES))
        # The socket's feed: only its user's events, in order, each once, and
        # every event of its own thread (all written after it connected).
        assert {c["user_id"] for c in changes} == {user}
        positions = [c["position"] for c in changes]
        assert positions == sorted(set(positions))
        own = [c["kind"] for c in changes if c["thread_id"] == thread]
        assert own == ["created"] + ["reused"] * (MESSAGES - 1)

    with ContextLedger.open(postgres_url) as ledger:
        for u in range(USERS):
            user = f"user-{u}"
            kinds = [event.kind for event in ledger.history(user)]
            assert kinds.count("created") == THREADS
            assert kinds.count("reused") == THREADS * (MESSAGES - 1)
            assert len(kinds) == THREADS * MESSAGES  # duplicates appended nothing
            live = ledger.active_contexts(user)
            assert sorted(c.reuse_count for c in live) == [MESSAGES - 1] * THREADS
    assert "ctxledger_commands_total" in metrics


def test_the_readme_app_refuses_a_socket_without_a_valid_token(server: str) -> None:
    async def attempt(token: str) -> int | None:
        try:
            async with websockets.connect(f"ws://{server}/ws?token={token}") as ws:
                await ws.recv()
        except websockets.exceptions.InvalidStatus as refused:
            return refused.response.status_code
        except websockets.exceptions.ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
        return None

    forged = _token("alice").replace("alice.", "mallory.")

    assert asyncio.run(attempt(forged)) in (403, 1008)
    assert asyncio.run(attempt("")) in (403, 1008)
