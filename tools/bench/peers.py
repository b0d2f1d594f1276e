"""The peer a user would pick instead: LangGraph's SQLite and PostgreSQL checkpointers.

A message loads the thread's latest checkpoint (``get_tuple``) and puts the next
one (``put``), holding what ctxledger's reuse event holds: a run id and a turn.
The savers come with the ``bench`` extra: import this module only when it is there.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    BaseCheckpointSaver,
    CheckpointMetadata,
    create_checkpoint,
    empty_checkpoint,
)
from langgraph.checkpoint.postgres import PostgresSaver
from langgraph.checkpoint.sqlite import SqliteSaver
from psycopg.conninfo import make_conninfo

from tools.bench.processes import Step
from tools.bench.workloads import Keys


def saver_conninfo(dsn: str, schema: str) -> str:
    """The DSN with ``schema`` alone on the search path: the saver's own tables."""
    return make_conninfo(dsn, options=f"-c search_path={schema}")


def set_up_sqlite(path: Path) -> None:
    """Creates the saver's tables once, before the processes start."""
    with SqliteSaver.from_conn_string(str(path)) as saver:
        saver.setup()


def set_up_postgres(conninfo: str) -> None:
    """Creates the saver's tables once, before the processes start."""
    with PostgresSaver.from_conn_string(conninfo) as saver:
        saver.setup()


@dataclass(frozen=True)
class SqlitePeer:
    path: Path
    keys: Keys

    @contextmanager
    def steps(self, worker: int, calls: int) -> Iterator[Step]:
        with SqliteSaver.from_conn_string(str(self.path)) as saver:
            yield _messages(saver, self.keys, worker, calls)


@dataclass(frozen=True)
class PostgresPeer:
    conninfo: str
    keys: Keys

    @contextmanager
    def steps(self, worker: int, calls: int) -> Iterator[Step]:
        with PostgresSaver.from_conn_string(self.conninfo) as saver:
            yield _messages(saver, self.keys, worker, calls)


def _messages(
    saver: BaseCheckpointSaver[Any], keys: Keys, worker: int, calls: int
) -> Step:
    """Writes each thread's first checkpoint, then returns the timed message."""
    for user, thread in keys.pairs(worker):
        _message(saver, f"{user}/{thread}", 0)
    picks = [f"{user}/{thread}" for user, thread in keys.picks(worker, calls)]
    return lambda n: _message(saver, picks[n], n + 1)


def _message(saver: BaseCheckpointSaver[Any], thread_id: str, turn: int) -> None:
    config: RunnableConfig = {
        "configurable": {"thread_id": thread_id, "checkpoint_ns": ""}
    }
    latest = saver.get_tuple(config)
    checkpoint = create_checkpoint(
        latest.checkpoint if latest else empty_checkpoint(), None, turn
    )
    checkpoint["channel_values"] = {"run_id": f"run-{turn}", "turn": turn}
    metadata: CheckpointMetadata = {"source": "loop", "step": turn, "parents": {}}
    saver.put(latest.config if latest else config, checkpoint, metadata, {})
