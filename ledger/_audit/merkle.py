"""The RFC 6962 Merkle tree of the log: hashes, node addressing, proofs and their
verification (RFC 9162 sections 2.1.3.2 and 2.1.4.2), with no storage.

A node ``(level, index)`` is the complete aligned subtree over the leaves
``[index * 2**level, (index + 1) * 2**level)``; level 0 nodes are leaf hashes. A proof
element is the hash of a range of leaves, the fold of the complete nodes that cover
it (``range_nodes``); a store keeps the complete nodes and folds them on demand.
"""

import hashlib
from collections.abc import Callable, Sequence

HASH_SIZE = 32
EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()

NodeId = tuple[int, int]
"""``(level, index)``: the complete subtree of ``2**level`` leaves at that index."""


def leaf_hash(data: bytes) -> bytes:
    """The hash of a leaf: SHA-256(0x00 || data)."""
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(size: int) -> int:
    """The largest power of two smaller than ``size`` (RFC 6962's k), for size > 1."""
    return 1 << ((size - 1).bit_length() - 1)


def range_nodes(start: int, end: int) -> list[NodeId]:
    """The complete nodes whose fold is MTH(D[start:end]), left to right, largest
    first; ``start`` must be a multiple of the range's largest part, as in every
    range that RFC 6962's root, PATH and PROOF use."""
    if not 0 <= start <= end:
        raise ValueError(f"no leaf range [{start}, {end}): need 0 <= start <= end")
    nodes: list[NodeId] = []
    position = start
    width = end - start
    for level in reversed(range(width.bit_length())):
        if width >> level & 1:
            if position % (1 << level):
                raise ValueError(
                    f"leaf range [{start}, {end}) is not aligned: its start must be "
                    f"a multiple of {1 << (width.bit_length() - 1)}"
                )
            nodes.append((level, position >> level))
            position += 1 << level
    return nodes


def fold(hashes: Sequence[bytes]) -> bytes:
    """The hash of a range from the hashes of its ``range_nodes``, in order."""
    if not hashes:
        return EMPTY_ROOT
    result = hashes[-1]
    for left in reversed(hashes[:-1]):
        result = node_hash(left, result)
    return result


def root_nodes(size: int) -> list[NodeId]:
    """The frontier of a tree of ``size`` leaves: the nodes that fold to its root."""
    return range_nodes(0, size)


def inclusion_nodes(index: int, size: int) -> list[list[NodeId]]:
    """RFC 9162 PATH(index, D[0:size]) as the nodes of each element, leaf side
    first."""
    if not 0 <= index < size:
        raise ValueError(f"no leaf {index} in a tree of {size} leaves")
    outer_first: list[list[NodeId]] = []
    low, high = 0, size
    while high - low > 1:
        middle = low + _split(high - low)
        if index < middle:
            outer_first.append(range_nodes(middle, high))
            high = middle
        else:
            outer_first.append(range_nodes(low, middle))
            low = middle
    return outer_first[::-1]


def consistency_nodes(old_size: int, new_size: int) -> list[list[NodeId]]:
    """RFC 9162 PROOF(old_size, D[0:new_size]) as the nodes of each element, in
    the RFC's order; empty when the sizes are equal or the old tree is empty."""
    if not 0 <= old_size <= new_size:
        raise ValueError(
            f"no consistency proof from {old_size} to {new_size} leaves: need "
            "0 <= old_size <= new_size"
        )
    if old_size in (0, new_size):
        return []
    outer_first: list[list[NodeId]] = []
    low, high, whole = 0, new_size, True
    while old_size != high:
        middle = low + _split(high - low)
        if old_size <= middle:
            outer_first.append(range_nodes(middle, high))
            high = middle
        else:
            outer_first.append(range_nodes(low, middle))
            low, whole = middle, False
    if not whole:
        outer_first.append(range_nodes(low, high))
    return outer_first[::-1]


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_hash(value: object) -> bool:
    return isinstance(value, bytes) and len(value) == HASH_SIZE


def _hashes(proof: object) -> list[bytes] | None:
    """The proof as a list if it is a sequence of well-formed hashes, else None."""
    if not isinstance(proof, Sequence) or isinstance(proof, str | bytes):
        return None
    elements = list(proof)
    return elements if all(_is_hash(element) for element in elements) else None


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> bool:
    """Whether ``proof`` shows the leaf hash ``leaf`` at ``index`` in the tree of
    ``size`` leaves with ``root`` (RFC 9162 section 2.1.3.2); never raises."""
    path = _hashes(proof)
    if path is None or not (_is_size(index) and _is_size(size)):
        return False
    if not (_is_hash(leaf) and _is_hash(root)) or index >= size:
        return False
    fn, sn, result = index, size - 1, leaf
    for sibling in path:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            result = node_hash(sibling, result)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            result = node_hash(result, sibling)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and result == root


def verify_consistency(
    old_size: int,
    new_size: int,
    old_root: bytes,
    new_root: bytes,
    proof: Sequence[bytes],
) -> bool:
    """Whether ``proof`` shows the tree of ``new_size`` leaves with ``new_root``
    extends the one of ``old_size`` with ``old_root`` (RFC 9162 section 2.1.4.2;
    the empty tree, whose root must be ``EMPTY_ROOT``, and equal sizes take an
    empty proof); never raises."""
    path = _hashes(proof)
    if path is None or not _coherent(old_size, new_size, old_root, new_root):
        return False
    if old_size == new_size:
        return not path and old_root == new_root
    if old_size == 0:
        return not path
    return _consistency_path_holds(old_size, new_size, old_root, new_root, path)


def _coherent(old_size: int, new_size: int, old_root: bytes, new_root: bytes) -> bool:
    """Sizes 0 <= old <= new, 32-byte roots, and the empty root for the empty tree."""
    if not (_is_size(old_size) and _is_size(new_size) and old_size <= new_size):
        return False
    if not (_is_hash(old_root) and _is_hash(new_root)):
        return False
    return old_size > 0 or old_root == EMPTY_ROOT


def _consistency_path_holds(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, path: list[bytes]
) -> bool:
    """Steps 1 to 7 of RFC 9162 section 2.1.4.2, for 0 < old_size < new_size."""
    if not path:
        return False
    if (old_size & (old_size - 1)) == 0:
        path = [old_root, *path]
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    first = second = path[0]
    for element in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            first = node_hash(element, first)
            second = node_hash(element, second)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            second = node_hash(second, element)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and first == old_root and second == new_root


def new_nodes(
    size: int, leaf: bytes, lookup: Callable[[NodeId], bytes]
) -> list[tuple[NodeId, bytes]]:
    """The nodes that appending ``leaf`` to a tree of ``size`` leaves completes:
    the leaf's own node, then each parent whose left child ``lookup`` gives (those
    left children are all in ``root_nodes(size)``)."""
    if not _is_size(size) or not _is_hash(leaf):
        raise ValueError("new_nodes needs a size >= 0 and a 32-byte leaf hash")
    level, index, current = 0, size, leaf
    completed: list[tuple[NodeId, bytes]] = [((0, size), leaf)]
    while index & 1:
        current = node_hash(lookup((level, index - 1)), current)
        level, index = level + 1, index >> 1
        completed.append(((level, index), current))
    return completed


class Frontier:
    """The root of a tree that grows a leaf at a time, kept as its complete
    subtrees only (O(log n) memory): how verification hashes a whole log."""

    def __init__(self) -> None:
        self._stack: list[tuple[int, bytes]] = []
        self.size = 0

    @classmethod
    def of(cls, size: int, hashes: Sequence[bytes]) -> "Frontier":
        """The frontier of a tree of ``size`` leaves, from the hashes of its
        ``root_nodes`` in order."""
        frontier = cls()
        nodes = root_nodes(size)
        frontier._stack = [
            (level, digest) for (level, _), digest in zip(nodes, hashes, strict=True)
        ]
        frontier.size = size
        return frontier

    def append(self, leaf: bytes) -> None:
        """Adds a leaf hash."""
        level, digest = 0, leaf
        while self._stack and self._stack[-1][0] == level:
            digest = node_hash(self._stack.pop()[1], digest)
            level += 1
        self._stack.append((level, digest))
        self.size += 1

    def root(self) -> bytes:
        return fold([digest for _, digest in self._stack])


class MemoryTree:
    """A tree held in memory, every complete node in a dict: a test oracle of the
    stores and a fast path for small logs."""

    def __init__(self) -> None:
        self._nodes: dict[NodeId, bytes] = {}
        self._size = 0

    @property
    def size(self) -> int:
        """The number of leaves appended."""
        return self._size

    def append(self, leaf_hash: bytes) -> None:
        """Add a leaf hash at index ``size``."""
        self._nodes.update(new_nodes(self._size, leaf_hash, self.node_by_id))
        self._size += 1

    def node(self, level: int, index: int) -> bytes:
        """The hash of a complete node; KeyError if it is not complete yet."""
        return self.node_by_id((level, index))

    def node_by_id(self, node: NodeId) -> bytes:
        """The hash of a complete node given as ``(level, index)``."""
        try:
            return self._nodes[node]
        except KeyError:
            raise KeyError(
                f"node {node} is not complete in a tree of {self._size} leaves"
            ) from None

    def root(self, size: int | None = None) -> bytes:
        """The root of the tree at ``size`` leaves (default: all of them)."""
        at = self._size if size is None else self._within(size)
        return self._fold(root_nodes(at))

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 PATH(index, D[0:size]) for ``size <= self.size``."""
        nodes = inclusion_nodes(index, self._within(size))
        return [self._fold(element) for element in nodes]

    def consistency_proof(self, old: int, new: int) -> list[bytes]:
        """RFC 9162 PROOF(old, D[0:new]) for ``new <= self.size``."""
        nodes = consistency_nodes(old, self._within(new))
        return [self._fold(element) for element in nodes]

    def _fold(self, nodes: list[NodeId]) -> bytes:
        return fold([self.node_by_id(node) for node in nodes])

    def _within(self, size: int) -> int:
        if not 0 <= size <= self._size:
            raise ValueError(f"the tree has {self._size} leaves, not {size}")
        return size
