"""Code that test worker processes run: many API calls on a few shared users."""

import random
from collections import Counter

from ledger import ConcurrencyConflict, ContextLedger, ContextNotFound

USERS = ("u0", "u1", "u2")
THREADS = ("t0", "t1")


def hammer(url: str, seed: int, calls: int) -> dict[str, int]:
    """Random opens, updates and clears; counts what was appended."""
    rng = random.Random(seed)
    done: Counter[str] = Counter()
    with ContextLedger.open(url) as ledger:
        for _ in range(calls):
            user, thread = rng.choice(USERS), rng.choice(THREADS)
            roll = rng.random()
            try:
                if roll < 0.75:
                    ledger.open_context(user, thread, metadata={"seed": seed})
                    done["opened"] += 1
                    continue
                current = ledger.get_context(user, thread)
                if current is None:
                    done["nothing_to_change"] += 1
                elif roll < 0.9:
                    ledger.update_context(
                        user, current.context_id, metadata={"n": seed}
                    )
                    done["updated"] += 1
                else:
                    ledger.clear_context(user, current.context_id)
                    done["cleared"] += 1
            except ContextNotFound:
                done["raced_with_a_clear"] += 1
            except ConcurrencyConflict:
                done["conflicts"] += 1
    return dict(done)
