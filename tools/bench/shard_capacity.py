"""The capacity model at 4, 16 and 64 shards, from the figures of one shard.

Shards share nothing but shard 0's database: it holds the directory (a process
reads a user's row there when its cache has none, and writes it for a new user)
and the views' tables, which take every shard's events. So, with each shard on a
primary of its own and the writers on hosts of their own:

- the write rate is the shards' count times one shard's rate, and storage that
  rate times the bytes an event takes;
- shard 0's server spends one directory read's CPU on each call that misses the
  cache (every call, on a cold cache);
- the views' database spends its CPU per event on every shard's events, to keep
  up; to catch up, each shard's worker reads and applies at its own rate, all at
  once, and the views' database needs the CPU for their sum;
- no user goes faster than one stream: a user's stream lives on one shard.

Each chat call appends one event (a message ``reused``, a reply ``updated``, a
new user's first message ``created``).
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
    directory_reads: float
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
    """Shard 0's server CPU for the directory if every call missed the cache."""
    views_cores_keep_up: float | None
    """The views' database's server CPU to apply every shard's events live."""
    views_cores_catch_up: float | None
    """... to apply them as fast as every shard's worker reads them."""


@dataclass
class Capacity:
    per_shard_write_rate: float
    """Calls/s of one shard here (its writers and server on the same 2 cores)."""
    server_ms_per_call: float | None
    directory_read_us: float | None
    """Shard 0's server CPU a directory read."""
    hot_user_rate: float | None
    bytes_per_event: int | None
    worker_events_per_s: float | None
    """One shard's rebuild worker, alone."""
    views_server_ms_per_event: float | None
    rows: list[Row] = field(default_factory=list)

    @property
    def catch_up_minutes_an_hour(self) -> float | None:
        """Minutes to catch up an hour behind, at the workers' rate."""
        rate, worker = self.per_shard_write_rate, self.worker_events_per_s
        if worker is None or worker <= rate:
            return None
        return round(60 * rate / (worker - rate), 1)


def model(
    one_shard: Measured,
    directory_read_us: float | None,
    hot_user: Throughput | None,
    storage: Storage | None,
    rebuild: Rebuild | None,
) -> Capacity:
    """The model from one shard's figures (a sharded ledger on one shard)."""
    rows = rebuild.rows if rebuild else []
    capacity = Capacity(
        per_shard_write_rate=one_shard.throughput.ops_per_s,
        server_ms_per_call=one_shard.server_ms_per_call,
        directory_read_us=directory_read_us,
        hot_user_rate=hot_user.ops_per_s if hot_user else None,
        bytes_per_event=storage.bytes_per_event if storage else None,
        worker_events_per_s=rows[0].per_shard_events_per_s if rows else None,
        # The widest rebuild: the views' database taking the most shards.
        views_server_ms_per_event=rows[-1].views_server_ms_per_event if rows else None,
    )
    capacity.rows = [_row(capacity, shards) for shards in SHARD_COUNTS]
    return capacity


def _row(capacity: Capacity, shards: int) -> Row:
    rate = capacity.per_shard_write_rate * shards
    read, views = capacity.directory_read_us, capacity.views_server_ms_per_event
    worker = capacity.worker_events_per_s
    return Row(
        shards=shards,
        write_rate=round(rate),
        storage_gb_a_day=round(
            rate * SECONDS_A_DAY * (capacity.bytes_per_event or 0) / 1e9, 1
        ),
        directory_cores_cold=_cores(rate, read, 1e6),
        views_cores_keep_up=_cores(rate, views, 1e3),
        views_cores_catch_up=_cores(worker * shards if worker else None, views, 1e3),
    )


def _cores(rate: float | None, cost: float | None, per_second: float) -> float | None:
    return None if rate is None or cost is None else round(rate * cost / per_second, 2)


def render_capacity(capacity: Capacity, console: Console) -> None:
    table = Table(
        "shards",
        "write rate, calls/s",
        "storage a day",
        "shard 0 cores: directory, cold cache",
        "views' database cores: keep up",
        "cores: catch up at the workers' rate",
        title="capacity model: each shard on a primary like one shard of this run",
    )
    for row in capacity.rows:
        table.add_row(
            str(row.shards),
            f"{row.write_rate:,.0f}",
            f"{row.storage_gb_a_day:,.1f} GB",
            _figure(row.directory_cores_cold, ""),
            _figure(row.views_cores_keep_up, ""),
            _figure(row.views_cores_catch_up, ""),
        )
    console.print(table)
    for line in _bounds(capacity):
        console.print(line, markup=False)


def _bounds(capacity: Capacity) -> list[str]:
    return [
        f"one shard: {capacity.per_shard_write_rate:,.0f} calls/s here; its server "
        f"spends {_figure(capacity.server_ms_per_call, 'ms')} of CPU a call",
        f"a directory read: {_figure(capacity.directory_read_us, 'us')} of shard "
        "0's server CPU",
        f"one user's stream, every process writing it: "
        f"{_figure(capacity.hot_user_rate, 'calls/s')}, whatever the shards",
        f"storage: {_figure(capacity.bytes_per_event, 'bytes')} an event, "
        "indexes, snapshots and keys included",
        f"views: one shard's worker applies "
        f"{_figure(capacity.worker_events_per_s, 'events/s')}; the views' "
        f"database's server spends {_figure(capacity.views_server_ms_per_event, 'ms')}"
        " an event; an hour behind is caught up in "
        f"{_figure(capacity.catch_up_minutes_an_hour, 'minutes')}",
    ]


def _figure(value: float | None, unit: str) -> str:
    if value is None:
        return "not measured"
    return f"{value:,.3g} {unit}".rstrip()
