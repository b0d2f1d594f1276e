"""The recipe's FastAPI app (docs/guide/fastapi.md), exactly as written, under a
real uvicorn with 2 worker processes on PostgreSQL, driven by real WebSocket clients."""

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from ledger import ContextLedger, LedgerConfigError
from tools.bench.recipe_servers import recipe

pytestmark = pytest.mark.postgres

USERS, THREADS, MESSAGES = 20, 3, 20
RESENT = {4, 9, 15}  # these messages of each thread are sent twice
SECRET = "test-secret"
MASTER_KEY = "7f" * 32
QUIET_SECONDS = 1.0  # a socket that received nothing for this long is drained
# How long a socket may wait for the changes a test knows are coming: the feed
# reads up to the log's safe head, which waits for every older transaction on the
# server (another test's, held open on purpose, included).
EXPECTED_SECONDS = 90.0


def _token(user: str) -> str:
    signature = hmac.new(SECRET.encode(), user.encode(), hashlib.sha256).hexdigest()
    return f"{user}.{signature}"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _uvicorn(app_dir: Path, port: int, env: dict[str, str]) -> subprocess.Popen[str]:
    """uvicorn with 2 workers serving app_dir's app.py, in the environment env."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app:app",
            "--app-dir",
            str(app_dir),
            "--workers",
            "2",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@contextmanager
def _serving(postgres_url: str, app_dir: Path, **settings: str) -> Iterator[str]:
    """The recipe's app under uvicorn with 2 workers; yields its address."""
    (app_dir / "app.py").write_text(recipe())
    with ContextLedger.open(postgres_url, master_key=MASTER_KEY):
        pass  # the tables exist before two workers start
    port = _free_port()
    env = {
        **os.environ,
        "CTXLEDGER_URL": postgres_url,
        "CTXLEDGER_MASTER_KEY": MASTER_KEY,
        "APP_SECRET": SECRET,
        **settings,
    }
    process = _uvicorn(app_dir, port, env)
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/healthz", timeout=1
            ) as answer:
                if answer.status == 200:
                    break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read() if process.stdout else ""
                pytest.fail(f"uvicorn did not start: {output}")
            time.sleep(0.2)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        if process.stdout is not None:
            process.stdout.close()


@pytest.fixture
def server(postgres_url: str, tmp_path: Path) -> Iterator[str]:
    with _serving(postgres_url, tmp_path) as address:
        yield address


class Client:
    """One socket of the app: ``ask`` returns the reply to a message, and every
    change pushed meanwhile is kept in ``changes``."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.changes: list[dict[str, Any]] = []

    async def ask(self, frame: str | bytes) -> dict[str, Any]:
        await self.ws.send(frame)
        while True:
            received: dict[str, Any] = json.loads(await self.ws.recv())
            if received["type"] != "change":
                return received
            self.changes.append(received)

    async def send(self, message_id: str, thread_id: str) -> dict[str, Any]:
        return await self.ask(
            json.dumps({"message_id": message_id, "thread_id": thread_id})
        )

    async def drain(
        self, until: Callable[[list[dict[str, Any]]], bool] | None = None
    ) -> list[dict[str, Any]]:
        """The changes still on their way: until ``until`` holds of them (waited
        for up to EXPECTED_SECONDS), then until none comes for a while."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + EXPECTED_SECONDS
        try:
            while True:
                wait = QUIET_SECONDS
                if until is not None and not until(self.changes):
                    wait = max(QUIET_SECONDS, deadline - loop.time())
                received = await asyncio.wait_for(self.ws.recv(), wait)
                self.changes.append(json.loads(received))
        except TimeoutError:
            pass
        return self.changes


def _connect(address: str, user: str, after: int | None = None) -> Any:
    resume = "" if after is None else f"&after={after}"
    return websockets.connect(f"ws://{address}/ws?token={_token(user)}{resume}")


def _stored_positions(url: str, user: str) -> list[int]:
    """The positions of the user's events, read from the store."""
    with ContextLedger.open(url, master_key=MASTER_KEY) as ledger:
        feed = ledger.changes(user, after=0)
        head, positions = ledger.chain_size(), list[int]()
        for _ in range(1000):
            if feed.position >= head:
                return positions
            positions += [position for position, _ in feed.poll()]
        pytest.fail(f"the feed of {user} did not reach the head {head}")


async def _converse(address: str, user: str, thread: str) -> tuple[Any, Any]:
    """Sends the thread's messages (some twice), one at a time; returns the replies
    and every change the socket was pushed."""
    replies: list[dict[str, Any]] = []
    async with _connect(address, user) as ws:
        client = Client(ws)
        for n in range(MESSAGES):
            for _ in range(2 if n in RESENT else 1):
                replies.append(await client.send(f"{thread}-m{n}", thread))
        # Every message of its own thread comes back as a change.
        return replies, await client.drain(
            until=lambda changes: (
                sum(c["thread_id"] == thread for c in changes) >= MESSAGES
            )
        )


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
        own = [
            (c["kind"], c["message_id"]) for c in changes if c["thread_id"] == thread
        ]
        assert own == [("created", f"{thread}-m0")] + [
            ("reused", f"{thread}-m{n}") for n in range(1, MESSAGES)
        ]

    with ContextLedger.open(postgres_url, master_key=MASTER_KEY) as ledger:
        for u in range(USERS):
            user = f"user-{u}"
            kinds = [event.kind for event in ledger.history(user)]
            assert kinds.count("created") == THREADS
            assert kinds.count("reused") == THREADS * (MESSAGES - 1)
            assert len(kinds) == THREADS * MESSAGES  # duplicates appended nothing
            live = ledger.active_contexts(user)
            assert sorted(c.reuse_count for c in live) == [MESSAGES - 1] * THREADS
    assert "ctxledger_commands_total" in metrics


def test_a_socket_that_reconnects_after_its_last_position_gets_each_later_event_once(
    server: str, postgres_url: str
) -> None:
    async def reconnecting(user: str) -> list[int]:
        """Thread a's socket leaves after 5 messages, while thread b's socket
        writes 10, and comes back with the position of the last change it got."""
        async with _connect(server, user) as ws:
            first = Client(ws)
            for n in range(5):
                await first.send(f"a{n}", "a")
                if n == 0:  # the feed is live once its first change came
                    while not first.changes:
                        first.changes.append(json.loads(await ws.recv()))
        async with _connect(server, user) as ws:
            for n in range(10):
                await Client(ws).send(f"b{n}", "b")
        last = first.changes[-1]["position"]
        async with _connect(server, user, after=last) as ws:
            second = Client(ws)
            for n in range(5, 10):
                await second.send(f"a{n}", "a")
            # 20 messages, an event each: those the first socket did not get.
            missing = 20 - len(first.changes)
            await second.drain(until=lambda changes: len(changes) >= missing)
        return [c["position"] for c in first.changes + second.changes]

    async def everyone() -> list[list[int]]:
        return list(
            await asyncio.gather(*[reconnecting(f"user-{u}") for u in range(10)])
        )

    received = asyncio.run(everyone())

    for u, positions in enumerate(received):
        assert positions == _stored_positions(postgres_url, f"user-{u}")


def test_every_reply_carries_the_message_id_it_answers_errors_included(
    server: str,
) -> None:
    async def conversation() -> list[dict[str, Any]]:
        async with _connect(server, "alice") as ws:
            client = Client(ws)
            return [
                await client.ask("not json"),
                await client.ask(b"\x00binary"),
                await client.ask(json.dumps({"message_id": "m1"})),
                await client.ask(json.dumps({"message_id": 7, "thread_id": "t"})),
                await client.send("m2", ""),
                await client.send("m3", "t"),
            ]

    replies = asyncio.run(conversation())

    assert [(r["type"], r["message_id"], r.get("error")) for r in replies] == [
        ("error", None, "BadMessage"),
        ("error", None, "BadMessage"),
        ("error", "m1", "BadMessage"),
        ("error", 7, "BadMessage"),
        ("error", "m2", "InvalidContextInput"),
        ("ack", "m3", None),
    ]
    assert "thread_id" in replies[4]["detail"]


def test_a_users_eleventh_conversation_evicts_the_least_recently_used_one(
    server: str, postgres_url: str
) -> None:
    async def eleven_threads() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with _connect(server, "bob") as ws:
            client = Client(ws)
            replies = [await client.send(f"m{n}", f"t{n}") for n in range(11)]
            # 11 contexts created and the one evicted to make room.
            return replies, await client.drain(until=lambda c: len(c) >= 12)

    replies, changes = asyncio.run(eleven_threads())

    assert [r["type"] for r in replies] == ["ack"] * 11
    (evicted,) = [c for c in changes if c["kind"] == "cleared"]
    assert (evicted["thread_id"], evicted["reason"]) == ("t0", "evicted")
    assert evicted["message_id"] == "m10"  # the message that made room
    with ContextLedger.open(postgres_url, master_key=MASTER_KEY) as ledger:
        live = ledger.active_contexts("bob")
    assert sorted(c.thread_id for c in live) == sorted(f"t{n}" for n in range(1, 11))


def test_contexts_past_their_ttl_are_expired_on_schedule_and_only_once(
    postgres_url: str, tmp_path: Path
) -> None:
    async def idle_until_expired(address: str) -> list[dict[str, Any]]:
        async with _connect(address, "carol") as ws:
            client = Client(ws)
            await client.send("m0", "t")
            deadline = time.monotonic() + EXPECTED_SECONDS
            while not any(c["kind"] == "expired" for c in client.changes):
                assert time.monotonic() < deadline, client.changes
                client.changes.append(json.loads(await ws.recv()))
            await asyncio.sleep(2)  # both workers run the schedule again meanwhile
            return await client.drain()

    with _serving(
        postgres_url, tmp_path, CONTEXT_TTL_SECONDS="1", EXPIRE_EVERY_SECONDS="0.5"
    ) as address:
        changes = asyncio.run(idle_until_expired(address))

    assert [c["kind"] for c in changes] == ["created", "expired"]
    with ContextLedger.open(postgres_url, master_key=MASTER_KEY) as ledger:
        assert [e.kind for e in ledger.history("carol")] == ["created", "expired"]


def test_the_readme_app_wraps_every_data_key_with_the_master_key(
    server: str, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def some_users() -> None:
        for u in range(3):
            async with _connect(server, f"dave-{u}") as ws:
                await Client(ws).send("m0", "t")

    asyncio.run(some_users())
    monkeypatch.delenv("CTXLEDGER_MASTER_KEY", raising=False)

    dsn, _, schema = postgres_url.partition("?schema=")
    with psycopg.connect(dsn) as connection:
        rows = connection.execute(
            f'SELECT stream_id, wrapped FROM "{schema}".ctxledger_keys'  # noqa: S608
        ).fetchall()
    assert len(rows) >= 3
    assert all(wrapped for _, wrapped in rows)
    with pytest.raises(LedgerConfigError, match="wrapped by a master key"):
        ContextLedger.open(postgres_url)


def test_the_readme_app_does_not_start_without_a_master_key(
    postgres_url: str, tmp_path: Path
) -> None:
    (tmp_path / "app.py").write_text(recipe())
    env = {k: v for k, v in os.environ.items() if k != "CTXLEDGER_MASTER_KEY"}
    env |= {"CTXLEDGER_URL": postgres_url, "APP_SECRET": SECRET}
    process = _uvicorn(tmp_path, _free_port(), env)
    try:
        output, _ = process.communicate(timeout=60)  # it stops (uvicorn exits 0)
    finally:
        process.kill()

    assert "set CTXLEDGER_MASTER_KEY" in output


def test_the_readme_app_refuses_a_socket_without_a_valid_token_or_position(
    server: str,
) -> None:
    async def attempt(token: str, after: str = "") -> int | None:
        address = f"ws://{server}/ws?token={token}{after}"
        try:
            async with websockets.connect(address) as ws:
                await ws.recv()
        except websockets.exceptions.InvalidStatus as refused:
            return refused.response.status_code
        except websockets.exceptions.ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd else None
        return None

    forged = _token("alice").replace("alice.", "mallory.")

    assert asyncio.run(attempt(forged)) in (403, 1008)
    assert asyncio.run(attempt("")) in (403, 1008)
    assert asyncio.run(attempt(_token("alice"), "&after=-1")) in (403, 1008)
    assert asyncio.run(attempt("alice.%C3%A9t%C3%A9")) in (403, 1008)  # non-ASCII
    assert asyncio.run(attempt(_token("alice"), "&after=999999999")) == 4400
