"""`ctxledger active` leaves out contexts whose time to live has run out, as
`active_contexts` does, and says how many on stderr until `expire` records them."""

import json
from datetime import UTC, datetime, timedelta

from ledger import ContextLedger
from projections import Projections
from tests.helpers import cli_on

AN_HOUR_AGO = datetime.now(tz=UTC) - timedelta(hours=1)


def test_active_leaves_out_a_context_past_its_ttl_and_says_so(durable_url: str) -> None:
    with ContextLedger.open(durable_url, clock=lambda: AN_HOUR_AGO) as ledger:
        ledger.open_context("alice", "stale", ttl_seconds=60)
        ledger.open_context("alice", "lasting")
    with Projections.open(durable_url) as views:
        views.catch_up()

    done = cli_on("active", "--user", "alice", "--json", url=durable_url)

    assert done.returncode == 0, done.stderr
    assert [c["thread_id"] for c in json.loads(done.stdout)] == ["lasting"]
    assert "1 context(s) past their time to live left out" in done.stderr


def test_active_says_nothing_once_expire_has_recorded_it(durable_url: str) -> None:
    with ContextLedger.open(durable_url, clock=lambda: AN_HOUR_AGO) as ledger:
        ledger.open_context("alice", "stale", ttl_seconds=60)
    with ContextLedger.open(durable_url) as ledger:
        assert ledger.expire_due() == 1
    with Projections.open(durable_url) as views:
        views.catch_up()

    done = cli_on("active", url=durable_url)

    assert done.returncode == 0, done.stderr
    assert "left out" not in done.stderr
    assert "0 of 0 active context(s) shown" in done.stdout
