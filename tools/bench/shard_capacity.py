"""The capacity model at 4, 16 and 64 shards, from the figures of one shard.

Shards share nothing but shard 0's database: it holds the directory (a process
reads a user's row there when its cache has none, and writes it for a new user)
and the views' tables, which take every shard's events. So, with each shard on a
primary of its own and the writers on hosts of their own:

- the write rate is the shards' count times one shard's rate, and storage that
  rate times the bytes an event takes;
- shard 0's server spends one directory read's CPU on each call that misses the
  cache (every call, on a cold cache);
- the live views are applied by one process (``ctxledger project --follow``, a
  thread per shard's log): they keep up while the write rate stays below that
  process's rate, whatever the shards; a rebuild runs a worker per shard at
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
    follower_over_write_rate: float | None
    """The live follower's rate over the write rate: below 1, the views fall
    further behind."""
    views_cores_rebuild: float | None
    """The views' database's server CPU for a rebuild at every worker's rate."""


@dataclass
class Capacity:
    per_shard_write_rate: float
    """Calls/s of one shard here (its writers and server on the same 2 cores)."""
    server_ms_per_call: float | None
    directory_read_us: float | None
    """Shard 0's server CPU a directory read."""
    hot_user_rate: float | None
    bytes_per_event: int | None
    follower_events_per_s: float | None
    """One process following every shard's log (the widest run's)."""
    worker_events_per_s: float | None
    """One shard's rebuild worker, alone."""
    views_server_ms_per_event: float | None
    rows: list[Row] = field(default_factory=list)

    @property
    def rebuild_hours_a_day(self) -> float | None:
        """Hours to rebuild a day of writes, every shard's worker at its rate
        (the same at any number of shards)."""
        if not self.worker_events_per_s:
            return None
        return round(24 * self.per_shard_write_rate / self.worker_events_per_s, 1)


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
        follower_events_per_s=rows[-1].follow_events_per_s if rows else None,
        worker_events_per_s=rows[0].per_shard_events_per_s if rows else None,
        # The widest rebuild: the views' database taking the most shards.
        views_server_ms_per_event=rows[-1].views_server_ms_per_event if rows else None,
    )
    capacity.rows = [_row(capacity, shards) for shards in SHARD_COUNTS]
    return capacity


def _row(capacity: Capacity, shards: int) -> Row:
    rate = capacity.per_shard_write_rate * shards
    read, views = capacity.directory_read_us, capacity.views_server_ms_per_event
    worker, follower = capacity.worker_events_per_s, capacity.follower_events_per_s
    return Row(
        shards=shards,
        write_rate=round(rate),
        storage_gb_a_day=round(
            rate * SECONDS_A_DAY * (capacity.bytes_per_event or 0) / 1e9, 1
        ),
        directory_cores_cold=_cores(rate, read, 1e6),
        follower_over_write_rate=round(follower / rate, 2) if follower else None,
        views_cores_rebuild=_cores(worker * shards if worker else None, views, 1e3),
    )


def _cores(rate: float | None, cost: float | None, per_second: float) -> float | None:
    return None if rate is None or cost is None else round(rate * cost / per_second, 2)


def render_capacity(capacity: Capacity, console: Console) -> None:
    table = Table(
        "shards",
        "write rate, calls/s",
        "storage a day",
        "shard 0 cores: directory, cold cache",
        "live views: follower / write rate",
        "rebuild: views' database cores",
        title="capacity model: each shard on a primary like one shard of this run",
    )
    for row in capacity.rows:
        table.add_row(
            str(row.shards),
            f"{row.write_rate:,.0f}",
            f"{row.storage_gb_a_day:,.1f} GB",
            _figure(row.directory_cores_cold, ""),
            _figure(row.follower_over_write_rate, "x"),
            _figure(row.views_cores_rebuild, ""),
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
        f"live views: one follower applies "
        f"{_figure(capacity.follower_events_per_s, 'events/s')} over all shards",
        f"rebuild: one shard's worker applies "
        f"{_figure(capacity.worker_events_per_s, 'events/s')}; the views' "
        f"database's server spends {_figure(capacity.views_server_ms_per_event, 'ms')}"
        " an event; a day of writes is rebuilt in "
        f"{_figure(capacity.rebuild_hours_a_day, 'hours')}",
    ]


def _figure(value: float | None, unit: str) -> str:
    if value is None:
        return "not measured"
    return f"{value:,.3g} {unit}".rstrip()
