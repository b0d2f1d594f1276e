"""One pass over a log and its tree: where they first disagree, and the root of
each one's first leaves, so verification knows which one to trust.

The tree's leaves are read as its level-0 nodes (a leaf whose naming row was
deleted still counts; a deleted node shows as a gap), beside the log's events
decoded by the readers' one decoder, in log order.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict

from ledger._audit.log_tree import BATCH, LoggedLeaf, LogTree
from ledger._audit.merkle import Frontier
from ledger._store.tree_store import Leaf

LeafFaultKind = Literal["missing", "altered", "added", "reordered", "inconsistent"]
Departed = Callable[[Leaf, bytes], bool]
"""Whether a leaf's event left this log for another shard's, which holds it
(``ledger._sharded_checkpoints``)."""


class LeafFault(BaseModel):
    """The first leaf of the tree that the log no longer matches."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fault: LeafFaultKind
    leaf: int | None
    """Its index in the tree (None when no leaf can be named)."""
    user_id: str | None
    version: int | None
    position: int | None
    """Its position in the log."""
    detail: str

    def __str__(self) -> str:
        if self.leaf is None:
            return f"{self.fault}: {self.detail}"
        if self.user_id is None:
            named = "the tree's row naming its event is gone"
        else:
            named = (
                f"user {self.user_id!r}, version {self.version}, "
                f"log position {self.position}"
            )
        return f"leaf {self.leaf} ({named}): {self.fault}: {self.detail}"


@dataclass
class Scan:
    """What one pass found."""

    mismatch: LeafFault | None = None
    tree_root: Frontier = field(default_factory=Frontier)
    """The root of the tree's first leaves (those before the checkpoint's size)."""
    log_root: Frontier = field(default_factory=Frontier)
    """The root of the log's first events, as leaves."""


def scan(tree: LogTree, size: int, departed: Departed | None = None) -> Scan:
    """Compares the tree's leaves with the log's events, place by place; a leaf
    whose event ``departed`` to another shard is passed over."""
    found = Scan()
    logged = _log_leaves(tree)
    item = _next_of(logged, found, size)
    for index, digest, leaf in _tree_leaves(tree):
        if index < size and digest:
            found.tree_root.append(digest)
        named = leaf or Leaf(index, -1, "", -1, "")
        gone = item is None or (
            item.hash != digest and item.leaf.position > named.position
        )
        if (
            gone
            and leaf is not None
            and departed is not None
            and departed(leaf, digest)
        ):
            continue
        if item is None:
            found.mismatch = found.mismatch or _fault(
                "missing", named, "the log ends before it"
            )
            continue
        if found.mismatch is None:
            found.mismatch = _compared(index, leaf, named, digest, item)
        item = _next_of(logged, found, size)
    if item is not None and found.mismatch is None:
        found.mismatch = _fault(
            "added", item.leaf, "an event the tree never took stands in the log"
        )
    while _next_of(logged, found, size) is not None and found.log_root.size < size:
        pass
    return found


def _next_of(logged: Iterator[LoggedLeaf], found: Scan, size: int) -> LoggedLeaf | None:
    item = next(logged, None)
    if item is not None and found.log_root.size < size:
        found.log_root.append(item.hash or b"")
    return item


def _compared(
    index: int, leaf: Leaf | None, named: Leaf, digest: bytes, item: LoggedLeaf
) -> LeafFault | None:
    """The fault at one place, if any: another event than the tree's, or the
    tree's row naming another event than the one its hash is (exports rely
    on those rows to find a user's leaves)."""
    if item.hash != digest:
        return _classify(named, item)
    event = item.leaf
    if leaf is not None and leaf[1:4] != event[1:4]:
        return _fault(
            "inconsistent",
            event._replace(number=index),
            f"the tree's row for this leaf names version {leaf.version} of stream "
            f"{leaf.stream} at position {leaf.position}: the tree's table was changed",
        )
    return None


def _classify(leaf: Leaf, found: LoggedLeaf) -> LeafFault:
    other = found.leaf
    if other.position > leaf.position:
        return _fault("missing", leaf, "its event is no longer in the log")
    if other.position < leaf.position:
        return _fault(
            "added",
            other._replace(number=leaf.number),
            "an event the tree never took stands before this leaf's event",
        )
    if found.problem is not None:
        return _fault("altered", leaf, found.problem)
    if (other.stream, other.version) != (leaf.stream, leaf.version):
        return _fault(
            "reordered",
            leaf,
            f"its place in the log holds version {other.version} of "
            f"{'its user' if other.stream == leaf.stream else 'another stream'}",
        )
    return _fault("altered", leaf, "its hash is not the one the tree took")


def _fault(kind: LeafFaultKind, leaf: Leaf, detail: str) -> LeafFault:
    return LeafFault(
        fault=kind,
        leaf=None if leaf.number < 0 else leaf.number,
        user_id=leaf.user_id or None,
        version=None if leaf.version < 0 else leaf.version,
        position=None if leaf.position < 0 else leaf.position,
        detail=detail,
    )


def _tree_leaves(tree: LogTree) -> Iterator[tuple[int, bytes, Leaf | None]]:
    """The tree's leaves in order; a missing one as an empty hash."""
    expected = 0
    while page := tree.store.leaves(expected, BATCH):
        for index, digest, leaf in page:
            while expected < index:  # a leaf deleted from the tree's table
                yield expected, b"", None
                expected += 1
            yield index, digest, leaf
            expected = index + 1
    size = tree.store.state().size
    for index in range(expected, size):
        yield index, b"", None


def _log_leaves(tree: LogTree) -> Iterator[LoggedLeaf]:
    """The log's events up to the position the tree has read, as leaves."""
    end = tree.store.state().position
    after = 0
    while after < end:
        rows = tree.log_rows(after, BATCH, end)
        if not rows:
            return
        yield from tree.read(rows, exact=True)
        after = rows[-1][0]
