"""What the view commands say of where the views are: on one database, or on
each shard of a sharded ledger."""

from ctxledger._cli import render
from projections import Projections, ShardViewStatus, ViewStatus


def shard_status_row(row: ShardViewStatus) -> tuple[render.Value, ...]:
    """A view on a shard's log; an unreachable shard shows no head, and says so."""
    if not row.reachable:
        return row.view, row.shard, row.position, None, "shard unreachable"
    return row.view, row.shard, row.position, row.head, row.lag


def warn_if_behind(views: Projections, name: str) -> None:
    """A view read while behind the ledger misses its newest events: say so."""
    rows = [row for row in views.status() if row.view == name]
    lag = sum(row.lag for row in rows)
    if lag:
        render.note(
            f"the {name} view is {lag} event(s) behind the ledger: "
            "run `ctxledger project` to bring it up to date"
        )
    unreachable = [shard_of(row) for row in rows if not _reachable(row)]
    if unreachable:
        render.note(
            f"the {name} view could not be compared with shard(s) "
            f"{', '.join(map(str, unreachable))}: unreachable, it may be behind them"
        )


def shard_of(row: ViewStatus) -> int:
    return row.shard if isinstance(row, ShardViewStatus) else 0


def _reachable(row: ViewStatus) -> bool:
    return row.reachable if isinstance(row, ShardViewStatus) else True


def stopped_line(reached: dict[str, int]) -> str:
    """Where ``follow`` stopped: a position (one database) or one per shard
    (keys ``view@shardN``), each the lowest of the views'."""
    if not reached:
        return "stopped before the views could be read"
    by_shard: dict[int, int] = {}
    for key, position in reached.items():
        shard = int(key.partition("@shard")[2] or 0)
        by_shard[shard] = min(by_shard.get(shard, position), position)
    if list(by_shard) == [0]:
        return f"stopped at position {by_shard[0]}"
    shown = ", ".join(f"shard {s}: {p}" for s, p in sorted(by_shard.items()))
    return f"stopped at positions {shown}"
