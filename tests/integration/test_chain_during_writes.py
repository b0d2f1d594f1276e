"""Checking every user's chain reads the log up to its safe head when the pass
begins: events appended during the pass are left to the next one, not faults."""

from ledger import ContextLedger
from ledger._store.application import SNAPSHOT_INTERVAL


def test_events_appended_while_all_chains_are_checked_are_not_faults(
    durable_url: str,
) -> None:
    with ContextLedger.open(durable_url) as ledger:
        for n in range(3):
            ledger.open_context("carol", f"t{n}")
        ledger.open_context("alice", "t")
        pages: list[int] = []

        def append_during_the_pass(events: int) -> None:
            pages.append(events)
            if len(pages) == 1:  # past the last snapshot: new snapshots are taken
                for user in ("carol", "dave"):
                    for _ in range(SNAPSHOT_INTERVAL + 2):
                        ledger.open_context(user, "t0")

        report = ledger.verify_chain(on_page=append_during_the_pass)

    assert report.broken == []
    assert {user.user_id: user.events for user in report.users} == {
        "alice": 1,
        "carol": 3,
    }
