"""The WebSocket clients of the recipe benchmark: conversations, reconnections by
position, idle sockets, and what each socket was acked and pushed."""

import asyncio
import hashlib
import hmac
import json
import time
import zlib
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

SECRET = "bench-secret"  # noqa: S105  (signs the bench's own test tokens)
CONNECTING_AT_ONCE = 50
QUIET_SECONDS = 1.0
"""A run ends once every message is acked and no socket received anything for
this long."""
RUN_TIMEOUT_SECONDS = 300.0


def token(user: str) -> str:
    signature = hmac.new(SECRET.encode(), user.encode(), hashlib.sha256).hexdigest()
    return f"{user}.{signature}"


@dataclass(frozen=True)
class Load:
    """users x threads sockets, each sending ``messages`` one at a time (the next
    once the last is acked, after ``pause`` seconds); a ``reconnecting`` share of
    them closes after half its messages and comes back with the position of the
    last change it received; ``idle`` more sockets, of other users, stay open and
    silent throughout."""

    users: int
    threads: int
    messages: int
    reconnecting: float = 0.0
    pause: float = 0.0
    idle: int = 0

    @property
    def sockets(self) -> int:
        return self.users * self.threads


@dataclass
class Tally:
    """What the clients saw; latencies in milliseconds."""

    acks: list[float] = field(default_factory=list)
    deliveries: list[float] = field(default_factory=list)
    errors: int = 0
    idle_frames: int = 0
    settled: bool = False
    """Every message acked and its change pushed before the run went quiet."""
    received: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    """The positions each conversation's socket was pushed, across reconnections."""


class Conversation:
    """One socket of a user's thread, across its reconnections."""

    def __init__(self, run: "Run", user: str, thread: int, *, reconnects: bool) -> None:
        self.run, self.user, self.thread = run, user, f"t{thread}"
        self.route = thread  # without stickiness, each thread on its own server
        self.positions = run.tally.received.setdefault((user, self.thread), [])
        self.acked: dict[str, float] = {}
        self.changed: dict[str, float] = {}
        self.waiting: dict[str, asyncio.Future[float]] = {}
        total = run.load.messages
        bounds = [0, total // 2, total] if reconnects and total > 1 else [0, total]
        self.sessions = list(pairwise(bounds))

    async def talk(self, gate: asyncio.Semaphore, ready: asyncio.Barrier) -> None:
        for first, last in self.sessions:
            after = self.positions[-1] if self.positions else self.run.after
            url = self.run.url(self.user, after, self.route)
            if first == 0:
                async with gate:
                    ws = await websockets.connect(url)
                await ready.wait()
            else:
                ws = await websockets.connect(url)
            async with ws:
                reader = asyncio.create_task(self.read(ws))
                for n in range(first, last):
                    await self.send(ws, f"{self.thread}-{n}")
                if last == self.run.load.messages:
                    await self.run.finished.wait()
                reader.cancel()
                with suppress(asyncio.CancelledError):
                    await reader

    async def send(self, ws: ClientConnection, message_id: str) -> None:
        answered = asyncio.get_running_loop().create_future()
        self.waiting[message_id] = answered
        sent = time.perf_counter()
        await ws.send(json.dumps({"message_id": message_id, "thread_id": self.thread}))
        self.acked[message_id] = await answered
        self.run.tally.acks.append((self.acked[message_id] - sent) * 1000)
        self.run.count_ack()
        if self.run.load.pause:
            await asyncio.sleep(self.run.load.pause)

    async def read(self, ws: ClientConnection) -> None:
        async for frame in ws:
            now = time.perf_counter()
            self.run.last_frame = now
            message: dict[str, Any] = json.loads(frame)
            if message["type"] == "change":
                self.positions.append(message["position"])
                caused_by = message["message_id"]
                if (
                    message["thread_id"] == self.thread
                    and caused_by not in self.changed
                ):
                    self.changed[caused_by] = now
                    self.run.count_change()
                continue
            if message["type"] != "ack":
                self.run.tally.errors += 1
            self.waiting.pop(message["message_id"]).set_result(now)

    def deliveries(self) -> list[float]:
        """From each ack to its own change (0 when the change came first)."""
        return [
            max(0.0, self.changed[m] - acked) * 1000
            for m, acked in self.acked.items()
            if m in self.changed
        ]


class Run:
    """One load against the servers at ``addresses``."""

    def __init__(
        self,
        addresses: list[str],
        load: Load,
        prefix: str,
        *,
        after: int,
        feed: bool,
        sticky: bool = False,
    ) -> None:
        self.addresses, self.load, self.prefix = addresses, load, prefix
        self.sticky = sticky
        self.after = after  # the log's head before the run
        self.tally = Tally()
        self.last_frame = time.perf_counter()
        self.finished = asyncio.Event()
        self._acks_left = load.sockets * load.messages
        self._changes_left = self._acks_left if feed else 0

    def url(self, user: str, after: int | None, route: int) -> str:
        """The socket's address: by ``route`` among the servers, or by the user
        (sticky: all of a user's sockets on one server)."""
        if self.sticky:
            route = zlib.crc32(user.encode())
        address = self.addresses[route % len(self.addresses)]
        resume = "" if after is None else f"&after={after}"
        return f"ws://{address}/ws?token={token(user)}{resume}"

    def count_ack(self) -> None:
        self._acks_left -= 1

    def count_change(self) -> None:
        self._changes_left -= 1

    async def drive(self, mark: Callable[[str], None]) -> Tally:
        """Opens the idle sockets, then the conversations' first sockets; once all
        are open they talk. Calls ``mark("start")`` then, ``mark("settled")`` once
        every message is acked and its change pushed (or the run went quiet
        without), and returns once the run is quiet."""
        gate = asyncio.Semaphore(CONNECTING_AT_ONCE)
        ready = asyncio.Barrier(self.load.sockets + 1)
        idle_open = asyncio.Barrier(self.load.idle + 1)
        every = round(1 / self.load.reconnecting) if self.load.reconnecting else 0
        conversations = [
            Conversation(
                self,
                f"{self.prefix}-u{u}",
                t,
                reconnects=bool(every) and (u * self.load.threads + t) % every == 0,
            )
            for u in range(self.load.users)
            for t in range(self.load.threads)
        ]
        async with asyncio.timeout(RUN_TIMEOUT_SECONDS):
            idlers = [
                asyncio.create_task(self._idle(n, gate, idle_open))
                for n in range(self.load.idle)
            ]
            await idle_open.wait()
            talkers = [asyncio.create_task(c.talk(gate, ready)) for c in conversations]
            await ready.wait()
            mark("start")
            await self._settle()
            mark("settled")
            while time.perf_counter() - self.last_frame < QUIET_SECONDS:
                await asyncio.sleep(0.05)
            self.finished.set()
            await asyncio.gather(*talkers, *idlers)
        for conversation in conversations:
            self.tally.deliveries += conversation.deliveries()
        return self.tally

    async def _settle(self) -> None:
        while self._acks_left > 0 or self._changes_left > 0:
            quiet = time.perf_counter() - self.last_frame > QUIET_SECONDS
            if self._acks_left <= 0 and quiet:
                return  # some change never came: counted as lost
            await asyncio.sleep(0.01)
        self.tally.settled = True

    async def _idle(
        self, n: int, gate: asyncio.Semaphore, idle_open: asyncio.Barrier
    ) -> None:
        async with gate:
            user = f"{self.prefix}-idle-{n}"
            ws = await websockets.connect(self.url(user, None, n))
        async with ws:
            await idle_open.wait()
            reader = asyncio.create_task(self._count_idle(ws))
            await self.finished.wait()
            reader.cancel()
            with suppress(asyncio.CancelledError):
                await reader

    async def _count_idle(self, ws: ClientConnection) -> None:
        async for _ in ws:
            self.tally.idle_frames += 1
