"""A simulated chat backend driving the ledger: the ``ctxledger demo`` workload."""

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from ledger import ContextLedger

DEMO_TTL_SECONDS = 30 * 60
EXPIRE_EVERY_MESSAGES = 100


@dataclass(frozen=True)
class DemoOptions:
    users: int = 25
    threads: int = 3
    messages: int = 1000
    seed: int = 7


@dataclass
class DemoSummary:
    """What a demo run did, as plain values."""

    messages: int = 0
    events: Counter[str] = field(default_factory=Counter)
    active_contexts: int = 0
    users_with_contexts: int = 0
    simulated_span: timedelta = timedelta(0)


class SimulatedClock:
    """Time that moves only when told, ending near the real present."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def simulated_start(options: DemoOptions, last_event: datetime | None) -> datetime:
    """About as far in the past as the simulated traffic lasts, so it ends near the
    present; after the last event of an earlier run if that is later."""
    start = datetime.now(tz=UTC) - timedelta(seconds=45 * options.messages)
    if last_event is not None and last_event >= start:
        return last_event + timedelta(seconds=1)
    return start


def run_demo(
    url: str, options: DemoOptions, on_message: Callable[[], None] = lambda: None
) -> DemoSummary:
    """Users send messages on their threads; some leave, some go idle and expire.

    A run on a ledger that already holds demo users continues their histories;
    the summary counts what this run appended.
    """
    rng = random.Random(options.seed)
    summary = DemoSummary()
    users = [f"demo-user-{n:04d}" for n in range(options.users)]
    clock = SimulatedClock(datetime.now(tz=UTC))
    with ContextLedger.open(
        url, default_ttl_seconds=DEMO_TTL_SECONDS, clock=clock
    ) as ledger:
        earlier = {user: ledger.history(user) for user in users}
        last = max((h[-1].occurred_at for h in earlier.values() if h), default=None)
        clock.now = start = simulated_start(options, last)
        for message in range(1, options.messages + 1):
            _one_message(
                ledger,
                rng,
                users=users,
                threads=options.threads,
                message=message,
            )
            clock.advance(rng.expovariate(1 / 45))
            if message % EXPIRE_EVERY_MESSAGES == 0:
                ledger.expire_due()
            summary.messages = message
            on_message()
        _collect(ledger, {user: len(h) for user, h in earlier.items()}, summary)
    summary.simulated_span = clock.now - start
    return summary


def _one_message(
    ledger: ContextLedger,
    rng: random.Random,
    *,
    users: list[str],
    threads: int,
    message: int,
) -> None:
    # A few users are much busier than the rest, as in real chat traffic.
    user = users[min(int(rng.paretovariate(1.2)) - 1, len(users) - 1)]
    thread = f"thread-{rng.randrange(threads)}"
    context = ledger.open_context(
        user, thread, run_id=f"run-{message}", metadata={"last_message": message}
    )
    roll = rng.random()
    if roll < 0.15:
        tokens = rng.randint(50, 4000)
        ledger.update_context(user, context.context_id, metadata={"tokens": tokens})
    elif roll < 0.18:
        ledger.clear_context(user, context.context_id, reason="conversation closed")
    elif roll < 0.185:
        ledger.clear_user(user, reason="user signed out")


def _collect(
    ledger: ContextLedger, earlier_counts: dict[str, int], summary: DemoSummary
) -> None:
    for user, earlier in earlier_counts.items():
        history = ledger.history(user)
        summary.events.update(event.kind for event in history[earlier:])
        active = ledger.active_contexts(user)
        summary.active_contexts += len(active)
        summary.users_with_contexts += bool(active)
