"""What the shard benchmark's writer processes run.

``ChatMix``: a chat backend's calls through ``ContextLedger.open(url)`` (sharded
when the URL's database holds a directory). ``SpreadFloor``: the floor's bare
INSERT + COMMIT spread over the shards' databases. ``Interleaved``: the chat mix
on several ledgers in turn, call by call, each call timed apart, so that a plain
ledger and a routed one meet the same moments of a shared machine.
"""

import json
import random
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from ledger import ContextLedger
from ledger._sharded import ShardedLedger
from tools.bench.processes import Step
from tools.bench.workloads import Keys, PostgresFloor

NEW_USERS = 0.01
"""The share of calls that are a new user's first message, by default: users
who send 100 messages in their life."""
REPLIES = 0.30


def mix(new_users: float) -> dict[str, float]:
    """A chat backend's calls: a message reuses its thread's context
    (open_context), a reply records metadata on it (update_context), a new
    user's first message creates one (and is assigned a shard)."""
    return {"message": 1 - REPLIES - new_users, "reply": REPLIES, "new user": new_users}


@dataclass(frozen=True)
class ChatKeys(Keys):
    """A process's users and threads, and the share of new users in its calls."""

    new_users: float = NEW_USERS

    def kinds(self, worker: int, calls: int) -> list[str]:
        shares = mix(self.new_users)
        rng = random.Random(self.seed * 1000 + worker + 1)
        return rng.choices(list(shares), weights=list(shares.values()), k=calls)


def chat_calls(ledger: ContextLedger, keys: ChatKeys, worker: int, calls: int) -> Step:
    """Opens the process's contexts (untimed), then returns the mix's call n."""
    opened = {
        (user, thread): ledger.open_context(user, thread, run_id="run-0").context_id
        for user, thread in keys.pairs(worker)
    }
    picks = keys.picks(worker, calls)
    kinds = keys.kinds(worker, calls)
    new_user = f"{keys.run}-w{worker}-new"

    def call(n: int) -> object:
        user, thread = picks[n]
        if kinds[n] == "new user":
            return ledger.open_context(f"{new_user}-{n}", "thread-0")
        if kinds[n] == "reply":
            reply = {"last_reply": f"reply {n}"}
            context = opened[user, thread]
            return ledger.update_context(user, context, metadata=reply)
        return ledger.open_context(user, thread, run_id=f"run-{n + 1}")

    return call


def open_ledger(url: str, keys: Keys, cache_seconds: float | None) -> ContextLedger:
    """The ledger at ``url``; ``cache_seconds`` sets its directory cache's life."""
    ledger = ContextLedger.open(url, max_contexts_per_user=keys.threads)
    if cache_seconds is not None and isinstance(ledger, ShardedLedger):
        ledger.directory.cache_seconds = cache_seconds
    return ledger


@dataclass(frozen=True)
class ChatMix:
    """The chat mix over the process's own users."""

    url: str
    keys: ChatKeys
    reports: Path
    """Where each process writes the directory queries of its timed calls."""

    @contextmanager
    def steps(self, worker: int, calls: int) -> Iterator[Step]:
        with open_ledger(self.url, self.keys, None) as ledger:
            step = chat_calls(ledger, self.keys, worker, calls)
            before = directory_reads(ledger)
            yield step
            reads = directory_reads(ledger) - before
            (self.reports / f"{worker}.reads").write_text(str(reads))


@dataclass(frozen=True)
class SpreadFloor:
    """The floor over several databases: call n inserts into database n mod k."""

    floors: tuple[PostgresFloor, ...]

    def urls(self) -> list[str]:
        return [floor.dsn for floor in self.floors]

    @contextmanager
    def steps(self, worker: int, calls: int) -> Iterator[Step]:
        with ExitStack() as stack:
            steps = [stack.enter_context(f.steps(worker, calls)) for f in self.floors]

            def insert(n: int) -> object:
                return steps[n % len(steps)](n)

            yield insert


@dataclass(frozen=True)
class Variant:
    label: str
    url: str
    cache_seconds: float | None = None


@dataclass(frozen=True)
class Interleaved:
    """Call n of the mix on every variant's ledger in turn (the order rotating),
    each timed apart; each process writes its timings to ``reports``."""

    variants: tuple[Variant, ...]
    keys: ChatKeys
    reports: Path

    @contextmanager
    def steps(self, worker: int, calls: int) -> Iterator[Step]:
        with ExitStack() as stack:
            steps, ledgers = [], []
            for variant in self.variants:
                ledger = open_ledger(variant.url, self.keys, variant.cache_seconds)
                ledgers.append(stack.enter_context(ledger))
                steps.append(chat_calls(ledger, self.keys, worker, calls))
            reads = [directory_reads(ledger) for ledger in ledgers]
            wall: list[list[int]] = [[] for _ in steps]
            cpu: list[list[int]] = [[] for _ in steps]

            def call(n: int) -> object:
                for i in _rotated(len(steps), n):
                    start, used = time.perf_counter_ns(), time.process_time_ns()
                    steps[i](n)
                    cpu[i].append(time.process_time_ns() - used)
                    wall[i].append(time.perf_counter_ns() - start)
                return None

            yield call
            report = {
                "wall_ns": wall,
                "cpu_ns": cpu,
                "kinds": self.keys.kinds(worker, calls),
                "directory_reads": [
                    directory_reads(ledger) - before
                    for ledger, before in zip(ledgers, reads, strict=True)
                ],
            }
            (self.reports / f"{worker}.json").write_text(json.dumps(report))


def directory_reads(ledger: ContextLedger) -> int:
    """The directory queries the ledger has made for routing (0: no directory)."""
    return ledger.directory.reads if isinstance(ledger, ShardedLedger) else 0


def _rotated(count: int, n: int) -> list[int]:
    return [(n + i) % count for i in range(count)]


@dataclass(frozen=True)
class Options:
    """The sizes of a run (the command's flags)."""

    processes: int
    calls: int
    users: int
    threads: int
    rounds: int
    new_users: float
    rebuild_events: int
    seed: int

    def keys(self, run: str) -> ChatKeys:
        return ChatKeys(run, self.users, self.threads, self.seed, self.new_users)
