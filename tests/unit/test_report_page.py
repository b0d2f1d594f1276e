"""What the report's page shows: the timeline scaled to the events, and the
details without the sealed metadata's commitment and salt unless asked."""

import re
from datetime import UTC, datetime, timedelta

from freezegun import freeze_time

from ctxledger._cli.report import LEFT, WIDTH, render_report
from ledger import ContextLedger, LedgerEvent, UserChain
from projections._continuity import continuity_of

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def _history() -> tuple[list[LedgerEvent], UserChain]:
    """A 30-second conversation on one open context."""
    with ContextLedger.open("memory://") as ledger, freeze_time(T0) as clock:
        ledger.open_context("dana", "chat", metadata={"topic": "refund"})
        for _ in range(3):
            clock.tick(10)
            ledger.open_context("dana", "chat")
        return ledger.history("dana"), ledger.verify_chain("dana").users[0]


def _page(now: datetime, *, sealing: bool = False) -> str:
    history, chain = _history()
    figures = continuity_of("dana", history)
    return render_report("dana", history, now, figures, chain, sealing=sealing)


def test_a_short_conversation_fills_the_timeline_of_a_report_made_hours_later() -> None:
    page = _page(T0 + timedelta(hours=3))

    reuses = [float(x) for x in re.findall(r'class="reuse"[^>]* x="([\d.]+)"', page)]

    assert min(reuses) < LEFT + WIDTH / 2
    assert max(reuses) > LEFT + WIDTH * 0.9


def test_the_details_leave_out_the_commitment_and_salt_unless_asked() -> None:
    hidden = _page(T0 + timedelta(minutes=1))
    shown = _page(T0 + timedelta(minutes=1), sealing=True)

    assert "metadata_commitment" not in hidden
    assert "metadata_salt" not in hidden
    assert "refund" in hidden
    assert "metadata_commitment" in shown
    assert "metadata_salt" in shown
