"""How far the views of a sharded ledger are, on each shard's log."""

from collections.abc import Iterable

from ledger import _metrics as metrics
from ledger.errors import StorageUnavailable
from projections._models import ShardViewStatus, ViewStatus
from projections._shard_set import ShardSet
from projections._store import ViewStore
from projections._view import Generation


def shard_status(
    shards: ShardSet, store: ViewStore, views: Iterable[str], built: frozenset[str]
) -> list[ShardViewStatus]:
    """A row per view and shard; a view not ``built`` is at position 0."""
    ids = shards.ids()
    heads = {shard: _reachable_head(shards, shard) for shard in ids}
    with store.reading() as tx:
        positions = {
            (name, shard): store.position(tx, Generation(name, False, shard).key)
            if name in built
            else 0
            for name in views
            for shard in ids
        }
    return [
        _row(shards, name, shard, position, heads[shard])
        for (name, shard), position in positions.items()
    ]


def _row(
    shards: ShardSet, name: str, shard: int, position: int, head: int | None
) -> ShardViewStatus:
    if head is None:
        return ShardViewStatus(
            view=name,
            shard=shard,
            position=position,
            head=position,
            lag=0,
            reachable=False,
        )
    lag = 0
    if position < head:
        with shards.failures(shard):
            lag = shards.source(shard).count_after(position)
    return ShardViewStatus(
        view=name, shard=shard, position=position, head=head, lag=lag
    )


def _reachable_head(shards: ShardSet, shard: int) -> int | None:
    try:
        with shards.failures(shard):
            return shards.source(shard).head()
    except StorageUnavailable:
        shards.lost(shard)
        return None


def record_figures(rows: list[ShardViewStatus], shards: Iterable[int]) -> None:
    """The views' metrics: summed over the shards, and by shard."""
    metrics.record_views(summed(rows))
    for shard in shards:
        metrics.record_shard_views(shard, [r for r in rows if r.shard == shard])


def summed(rows: list[ShardViewStatus]) -> list[ViewStatus]:
    """Each view's figures summed over the shards (the metrics without labels)."""
    totals: dict[str, list[int]] = {}
    for row in rows:
        total = totals.setdefault(row.view, [0, 0, 0])
        total[0] += row.position
        total[1] += row.head
        total[2] += row.lag
    return [
        ViewStatus(view=name, position=p, head=h, lag=lag)
        for name, (p, h, lag) in totals.items()
    ]
