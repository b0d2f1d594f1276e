"""The views over 1, 2 and 4 shards, each shard holding the same events.

The events are a simulated chat (``tools.bench.views.write_events``) with users of
each shard's own: shard 0's are written before the directory exists (making it
assigns them to shard 0), every other shard's after it joined, and the directory
then gives them to it. On shard 0's URL, timed with each server's CPU:
``Projections.open(url).catch_up()`` from nothing (what a live follower does: one
process, the shards in turn), then ``rebuild()`` (a process per shard, one
swap). A figure counts only when every view applied every shard's events.
"""

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


@dataclass
class RebuildRow:
    shards: int
    events: int
    catch_up_events_per_s: float
    """One process applying every shard's log in turn (``catch_up``)."""
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
        start = perf_counter()
        caught_up = views.catch_up()
        catch_up = written / (perf_counter() - start)
        before = _cpu(servers)
        start = perf_counter()
        applied = views.rebuild()
        seconds = perf_counter() - start
        after = _cpu(servers)
    for step, counts in (("catch-up", caught_up), ("rebuild", applied)):
        short = {name: count for name, count in counts.items() if count != written}
        if short:
            return (
                f"the {step} over {shards} shards applied {short} of "
                f"{written:,} events: the views do not span shards in this tree"
            )
    used = [
        None if b is None or a is None else a - b
        for b, a in zip(before, after, strict=True)
    ]
    views_cpu = used[0]
    return RebuildRow(
        shards=shards,
        events=written,
        catch_up_events_per_s=round(catch_up),
        seconds=round(seconds, 2),
        events_per_s=round(written / seconds),
        per_shard_events_per_s=round(written / shards / seconds),
        server_cores=[None if u is None else round(u / seconds, 2) for u in used],
        views_server_ms_per_event=(
            None if views_cpu is None else round(views_cpu * 1000 / written, 4)
        ),
    )


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
        "catch_up events/s",
        "rebuild s",
        "rebuild events/s",
        "per shard",
        "server cores, by shard",
        "views' server ms/event",
        title=(
            f"Projections: catch_up() from nothing, then rebuild(); "
            f"{rebuild.events_per_shard:,} events a shard"
        ),
        caption="server cores and ms/event: during the rebuild",
    )
    for row in rebuild.rows:
        table.add_row(
            str(row.shards) if row.shards > 1 else "1, no directory",
            f"{row.events:,}",
            f"{row.catch_up_events_per_s:,.0f}",
            f"{row.seconds:.2f}",
            f"{row.events_per_s:,.0f}",
            f"{row.per_shard_events_per_s:,.0f}",
            ", ".join("-" if c is None else f"{c:.2f}" for c in row.server_cores),
            "-"
            if row.views_server_ms_per_event is None
            else f"{row.views_server_ms_per_event:.4f}",
        )
    console.print(table)
