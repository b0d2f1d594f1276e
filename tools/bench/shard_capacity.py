"""The capacity model at 4, 16 and 64 shards, from the figures of one shard.

Shards share nothing but two databases: shard 0 holds the directory (every
process reads a user's row there on a cold cache, and writes it for a new user),
and the views' database (shard 0's too) takes every shard's events. So, with each
shard on a primary of its own and the writers on hosts of their own:

- the write rate is the shards' count times one shard's rate, as long as shard
  0's server has the CPU for the directory's reads, and no user needs more than
  the rate of one stream (a user's stream lives on one shard);
- storage grows as the write rate times the bytes an event takes;
- the views keep up while the events written per second stay below what the
  views' database applies per second; their catch-up runs one worker a shard, so
  it is bounded by the shards' workers and by that one database.
"""

from dataclasses import dataclass, field

from rich.console import Console
from rich.table import Table

from tools.bench.processes import Throughput
from tools.bench.shard_rebuild import Rebuild

SHARD_COUNTS = (4, 16, 64)
SECONDS_A_DAY = 86_400


@dataclass
class Measured:
    """One configuration's median run, beside its floor."""

    throughput: Throughput
    server_ms_per_call: float | None
    server_cores: list[float | None]
    floor_ops_per_s: float
    over_floor: float


@dataclass
class Storage:
    events: list[int]
    """Events on each shard of the widest configuration."""
    bytes: list[int]
    """The ledger's tables (indexes included) on each shard."""
    bytes_per_event: int


@dataclass
class Row:
    shards: int
    write_rate: float
    storage_gb_a_day: float
    directory_cores_cold: float | None
    """Shard 0's CPU for the directory if every call missed the cache."""
    views_catch_up: float | None
    """Events/s the views apply at most: the shards' workers or the views' database."""


@dataclass
class Capacity:
    per_shard_write_rate: float
    """Calls/s of one shard here (8 writers and the server on the same 2 cores)."""
    server_ms_per_call: float | None
    directory_read_server_us: float | None
    hot_user_rate: float | None
    bytes_per_event: int | None
    rebuild_per_shard: float | None
    views_database_events_per_core: float | None
    rows: list[Row] = field(default_factory=list)


def model(
    one_shard: Measured,
    directory_read_us: float | None,
    hot_user: Throughput | None,
    storage: Storage | None,
    rebuild: Rebuild | None,
) -> Capacity:
    """The model from one shard's figures (a sharded ledger on one shard)."""
    first = rebuild.rows[0] if rebuild and rebuild.rows else None
    views_ms = first.views_server_ms_per_event if first else None
    capacity = Capacity(
        per_shard_write_rate=one_shard.throughput.ops_per_s,
        server_ms_per_call=one_shard.server_ms_per_call,
        directory_read_server_us=directory_read_us,
        hot_user_rate=hot_user.ops_per_s if hot_user else None,
        bytes_per_event=storage.bytes_per_event if storage else None,
        rebuild_per_shard=first.per_shard_events_per_s if first else None,
        views_database_events_per_core=round(1000 / views_ms) if views_ms else None,
    )
    capacity.rows = [_row(capacity, shards) for shards in SHARD_COUNTS]
    return capacity


def _row(capacity: Capacity, shards: int) -> Row:
    rate = capacity.per_shard_write_rate * shards
    read = capacity.directory_read_server_us
    catch_up = None
    if capacity.rebuild_per_shard and capacity.views_database_events_per_core:
        catch_up = min(
            capacity.rebuild_per_shard * shards,
            capacity.views_database_events_per_core,
        )
    return Row(
        shards=shards,
        write_rate=round(rate),
        storage_gb_a_day=round(
            rate * SECONDS_A_DAY * (capacity.bytes_per_event or 0) / 1e9, 1
        ),
        directory_cores_cold=None if read is None else round(rate * read / 1e6, 2),
        views_catch_up=catch_up,
    )


def render_capacity(capacity: Capacity, console: Console) -> None:
    table = Table(
        "shards",
        "write rate (calls/s)",
        "storage a day",
        "directory on a cold cache (shard 0 cores)",
        "views catch-up bound (events/s; one core)",
        title="capacity model: each shard on a primary like this run's",
    )
    for row in capacity.rows:
        table.add_row(
            str(row.shards),
            f"{row.write_rate:,.0f}",
            f"{row.storage_gb_a_day:,.1f} GB",
            "-"
            if row.directory_cores_cold is None
            else f"{row.directory_cores_cold:.2f}",
            "-" if row.views_catch_up is None else f"{row.views_catch_up:,.0f}",
        )
    console.print(table)
    for line in _bounds(capacity):
        console.print(line, markup=False)


def _bounds(capacity: Capacity) -> list[str]:
    read = _figure(capacity.directory_read_server_us, "us")
    views = _figure(capacity.views_database_events_per_core, "events/s")
    lines = [
        f"one shard: {capacity.per_shard_write_rate:,.0f} calls/s here; its server "
        f"spends {_figure(capacity.server_ms_per_call, 'ms')} of CPU a call",
        f"a directory read on a cold cache: {read} of shard 0's server CPU (each "
        "process reads a user's row once per cache lifetime, 5 s, and on every "
        "call when the cache is cold)",
        f"one user's stream, every process writing it: "
        f"{_figure(capacity.hot_user_rate, 'calls/s')}, whatever the shards",
        f"storage: {_figure(capacity.bytes_per_event, 'bytes')} an event, "
        "indexes and snapshots included",
    ]
    if capacity.rebuild_per_shard is None:
        lines.append("views: not measured (see the rebuild's note)")
    else:
        lines.append(
            f"views: one shard's rebuild worker {capacity.rebuild_per_shard:,.0f} "
            f"events/s; the views' database applies {views} a core of its "
            "server, and every shard's events go there"
        )
    return lines


def _figure(value: float | None, unit: str) -> str:
    return "not measured" if value is None else f"{value:,.3g} {unit}"
