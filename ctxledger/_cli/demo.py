"""A simulated chat backend driving the ledger: the ``ctxledger demo`` workload."""

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import accumulate

from ledger import ContextLedger

DEMO_TTL_SECONDS = 30 * 60
MEAN_GAP_SECONDS = 45
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
    """Time that moves only when told."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now


def message_times(
    rng: random.Random, messages: int, last_event: datetime | None, now: datetime
) -> list[datetime]:
    """When each simulated message is sent: about 45 s apart, the last one at
    ``now``, and none before an earlier run's ``last_event``: if that leaves too
    little time, the gaps shrink to fit. No time is after ``now``."""
    gaps = [rng.expovariate(1 / MEAN_GAP_SECONDS) for _ in range(messages - 1)]
    span = sum(gaps)
    start = now - timedelta(seconds=span)
    if last_event is not None and last_event > start:
        start = min(last_event, now)
        room = (now - start).total_seconds()
        gaps = [gap * room / span for gap in gaps] if span > room else gaps
    return [
        min(start + timedelta(seconds=offset), now)
        for offset in accumulate(gaps, initial=0.0)
    ]


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
        times = message_times(rng, options.messages, last, datetime.now(tz=UTC))
        for message, sent_at in enumerate(times, 1):
            clock.now = sent_at
            _one_message(
                ledger,
                rng,
                users=users,
                threads=options.threads,
                message=message,
            )
            if message % EXPIRE_EVERY_MESSAGES == 0:
                ledger.expire_due()
            summary.messages = message
            on_message()
        _collect(ledger, {user: len(h) for user, h in earlier.items()}, summary)
    summary.simulated_span = times[-1] - times[0]
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
