"""The views over 1, 2 and 4 shards, each shard holding the same events.

The events are a simulated chat (``tools.bench.views.write_events``) with users of
each shard's own: shard 0's are written before the directory exists (making it
assigns them to shard 0), every other shard's after it joined, and the directory
then gives them to it. On shard 0's URL, timed: ``Projections.open(url).follow()``
from nothing until every view has applied every shard's head (what ``ctxledger
project --follow`` does: one process, a thread per shard's log), then
``rebuild()`` (a process per shard, one swap), with each server's CPU. The
rebuild counts only when every view applied every shard's events.
"""

import threading
from dataclasses import dataclass, field
from time import perf_counter

import psycopg
from psycopg import sql
from rich.console import Console
from rich.table import Table

from ledger._shard_admin import add_shard
from ledger._store.shard_directory import USERS_TABLE
from ledger.errors import LedgerError
from projections import ProjectionError, Projections
from tools.bench.clusters import Server, cpu_seconds, databases, ledger_url
from tools.bench.views import write_events

SHARD_COUNTS = (1, 2, 4)
FOLLOW_POLL = 0.05
FOLLOW_TIMEOUT_SECONDS = 900.0


@dataclass
class RebuildRow:
    shards: int
    events: int
    follow_events_per_s: float
    """One process following every shard's log from nothing (``follow``)."""
    seconds: float
    """The rebuild's."""
    events_per_s: float
    per_shard_events_per_s: float
    server_cores: list[float | None]
    """Each shard's server over the rebuild, in cores (shard 0's holds the views)."""
    views_server_ms_per_event: float | None
    """CPU of shard 0's server (the views' database) per event applied."""


@dataclass
class Rebuild:
    events_per_shard: int
    rows: list[RebuildRow] = field(default_factory=list)
    not_measured: str | None = None


def measure_rebuilds(servers: list[Server], events: int, console: Console) -> Rebuild:
    result = Rebuild(events)
    if not events:
        result.not_measured = "--rebuild-events 0"
        return result
    for shards in SHARD_COUNTS:
        console.print(f"rebuild over {shards} shard(s), {events:,} events each ...")
        used = servers[:shards] if len(servers) >= shards else servers[:1]
        with databases(servers, f"rebuild{shards}", shards) as urls:
            first = ledger_url(urls[0], servers[0])
            written = _load(first, urls, events)
            try:
                row = _rebuild(first, shards, written, used)
            except (ProjectionError, LedgerError) as error:
                result.not_measured = f"{type(error).__name__}: {error}"
                return result
        if isinstance(row, str):
            result.not_measured = row
            return result
        result.rows.append(row)
    return result


def _load(ledger: str, urls: list[str], events: int) -> int:
    """Writes ``events`` events on each shard (``ledger``: shard 0's URL as the
    ledger opens it); how many in all."""
    written = write_events(ledger, events, 1, prefix="shard0")
    for shard_id, url in enumerate(urls[1:], start=1):
        add_shard(ledger, url)
        written += write_events(url, events, 1 + shard_id, prefix=f"shard{shard_id}")
        _assign(urls[0], url, shard_id)
    return written


def _assign(directory_url: str, url: str, shard_id: int) -> None:
    """Gives the streams written on the shard to it in the directory."""
    with psycopg.connect(url) as shard:
        streams = shard.execute(
            "SELECT DISTINCT originator_id FROM ctxledger_events"
        ).fetchall()
    statement = sql.SQL(
        "INSERT INTO {} (stream_id, shard_id) VALUES (%s, %s) "
        "ON CONFLICT (stream_id) DO NOTHING"
    ).format(sql.Identifier(USERS_TABLE))
    with psycopg.connect(directory_url) as directory, directory.cursor() as cursor:
        cursor.executemany(statement, [(stream, shard_id) for (stream,) in streams])


def _rebuild(
    url: str, shards: int, written: int, servers: list[Server]
) -> RebuildRow | str:
    with Projections.open(url) as views:
        followed = written / _follow_seconds(views)
        before = _cpu(servers)
        start = perf_counter()
        applied = views.rebuild()
        seconds = perf_counter() - start
        after = _cpu(servers)
    short = {name: count for name, count in applied.items() if count != written}
    if short:
        return (
            f"the rebuild over {shards} shards applied {short} of {written:,} "
            "events: the views do not span shards in this tree"
        )
    used = [
        None if b is None or a is None else a - b
        for b, a in zip(before, after, strict=True)
    ]
    views_cpu = used[0]
    return RebuildRow(
        shards=shards,
        events=written,
        follow_events_per_s=round(followed),
        seconds=round(seconds, 2),
        events_per_s=round(written / seconds),
        per_shard_events_per_s=round(written / shards / seconds),
        server_cores=[None if u is None else round(u / seconds, 2) for u in used],
        views_server_ms_per_event=(
            None if views_cpu is None else round(views_cpu * 1000 / written, 4)
        ),
    )


def _follow_seconds(views: Projections) -> float:
    """How long ``follow`` takes from nothing to every shard's head now: to its
    last batch (``wait`` polls, and would add its own pause)."""
    stop, lock = threading.Event(), threading.Lock()
    last = [0.0]

    def batch(_: int) -> None:
        with lock:  # the batches of a sharded ledger come from a thread a shard
            last[0] = perf_counter()

    follower = threading.Thread(
        target=views.follow,
        args=(stop,),
        kwargs={"poll_seconds": FOLLOW_POLL, "on_batch": batch},
    )
    start = perf_counter()
    follower.start()
    try:
        views.wait(views.heads(), timeout=FOLLOW_TIMEOUT_SECONDS)
    finally:
        stop.set()
        follower.join()
    return last[0] - start


def _cpu(servers: list[Server]) -> list[float | None]:
    return [
        None if s.postmaster is None else cpu_seconds(s.postmaster) for s in servers
    ]


def render_rebuild(rebuild: Rebuild | None, console: Console) -> None:
    if rebuild is None:
        return
    if rebuild.not_measured:
        console.print(f"rebuild: not measured: {rebuild.not_measured}", markup=False)
    if not rebuild.rows:
        return
    table = Table(
        "shards",
        "events",
        "follow events/s",
        "rebuild s",
        "rebuild events/s",
        "per shard",
        "server cores, by shard",
        "views' server ms/event",
        title=(
            f"Projections: follow() from nothing, then rebuild(); "
            f"{rebuild.events_per_shard:,} events a shard"
        ),
        caption="server cores and ms/event: during the rebuild",
    )
    for row in rebuild.rows:
        table.add_row(
            str(row.shards) if row.shards > 1 else "1, no directory",
            f"{row.events:,}",
            f"{row.follow_events_per_s:,.0f}",
            f"{row.seconds:.2f}",
            f"{row.events_per_s:,.0f}",
            f"{row.per_shard_events_per_s:,.0f}",
            ", ".join("-" if c is None else f"{c:.2f}" for c in row.server_cores),
            "-"
            if row.views_server_ms_per_event is None
            else f"{row.views_server_ms_per_event:.4f}",
        )
    console.print(table)
