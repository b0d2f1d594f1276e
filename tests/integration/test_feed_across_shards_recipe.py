"""The recipe's FastAPI app, unchanged, under uvicorn with 2 workers on a ledger
over three shards: a socket that reconnects with the last position it got (text,
a position per shard) gets each later change of its user once."""

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import websockets

from ledger import ContextLedger
from ledger._sharded import ShardedLedger
from tests.e2e.test_fastapi_recipe import MASTER_KEY, Client, _serving, _token

pytestmark = pytest.mark.postgres

USERS = 12


@pytest.fixture
def server(sharded_url: str, tmp_path: Path) -> Iterator[str]:
    with _serving(sharded_url, tmp_path) as address:
        yield address


def _connect(address: str, user: str, after: str | None = None) -> Any:
    resume = "" if after is None else f"&after={quote(after)}"
    return websockets.connect(f"ws://{address}/ws?token={_token(user)}{resume}")


async def _reconnecting(address: str, user: str) -> list[dict[str, Any]]:
    """Thread a's socket leaves after 5 messages while thread b's socket writes 5,
    then comes back with the position of the last change it got and writes 5."""
    async with _connect(address, user) as ws:
        first = Client(ws)
        for n in range(5):
            await first.send(f"a{n}", "a")
            if n == 0:  # the feed is live once its first change came
                while not first.changes:
                    first.changes.append(json.loads(await ws.recv()))
    async with _connect(address, user) as ws:
        for n in range(5):
            await Client(ws).send(f"b{n}", "b")
    last = first.changes[-1]["position"]
    assert isinstance(last, str)
    async with _connect(address, user, after=last) as ws:
        second = Client(ws)
        for n in range(5, 10):
            await second.send(f"a{n}", "a")
        # 15 messages, an event each: those the first socket did not get.
        missing = 15 - len(first.changes)
        await second.drain(until=lambda changes: len(changes) >= missing)
    return first.changes + second.changes


def test_the_readme_app_on_shards_resumes_a_socket_from_its_last_position(
    server: str, sharded_url: str
) -> None:
    async def everyone() -> list[list[dict[str, Any]]]:
        users = [_reconnecting(server, f"user-{u}") for u in range(USERS)]
        return list(await asyncio.gather(*users))

    received = asyncio.run(everyone())

    with ContextLedger.open(sharded_url, master_key=MASTER_KEY) as ledger:
        assert isinstance(ledger, ShardedLedger)
        shards = {ledger.shard_of(f"user-{u}") for u in range(USERS)}
        for u, changes in enumerate(received):
            taken = Counter(c["message_id"] for c in changes)
            stored = Counter(
                e.details.get("request_id") for e in ledger.history(f"user-{u}")
            )
            assert taken == stored
            assert set(taken.values()) == {1}
    assert len(shards) >= 2
