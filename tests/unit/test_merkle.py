"""The Merkle tree against an oracle written from RFC 6962 section 2.1's recursive
definitions, against Certificate Transparency's reference vectors, and against
falsified proofs (every byte, every length, every neighbouring index and size)."""

import hashlib
import random
from collections.abc import Callable, Sequence
from functools import cache

import pytest

from ledger._audit.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    Frontier,
    MemoryTree,
    NodeId,
    consistency_nodes,
    fold,
    inclusion_nodes,
    leaf_hash,
    new_nodes,
    node_hash,
    range_nodes,
    root_nodes,
    verify_consistency,
    verify_inclusion,
)

# --- The oracle: RFC 6962 section 2.1, plain recursion on lists of entries. ---


def _k(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def mth(d: Sequence[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = _k(len(d))
    return hashlib.sha256(b"\x01" + mth(d[:k]) + mth(d[k:])).digest()


def path(m: int, d: Sequence[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*path(m, d[:k]), mth(d[k:])]
    return [*path(m - k, d[k:]), mth(d[:k])]


def subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [mth(d)]
    k = _k(n)
    if m <= k:
        return [*subproof(m, d[:k], b), mth(d[k:])]
    return [*subproof(m - k, d[k:], False), mth(d[:k])]


def proof(m: int, d: Sequence[bytes]) -> list[bytes]:
    """PROOF(m, D[n]); the consistency of the empty tree takes no proof."""
    return [] if m == 0 else subproof(m, d, True)


# --- The tree under test, and the oracle's hash of any complete node. ---

LARGEST = 4_001  # twice the largest size checked, and one
DATA = [f"entry {i}".encode() for i in range(LARGEST)]
TREE = MemoryTree()
for _entry in DATA:
    TREE.append(leaf_hash(_entry))


@cache
def oracle_node(node: NodeId) -> bytes:
    level, index = node
    return mth(DATA[index << level : (index + 1) << level])


def folded(elements: list[list[NodeId]]) -> list[bytes]:
    return [fold([oracle_node(node) for node in element]) for element in elements]


def _random_sizes() -> list[int]:
    """Sizes around every power of two up to 1,024, and random ones up to 2,000."""
    near = {2**p + delta for p in range(11) for delta in (-1, 0, 1)}
    rng = random.Random(6962)
    return sorted(near | {rng.randint(65, 2_000) for _ in range(12)})


RANDOM_SIZES = _random_sizes()


def _random_pairs(inclusion: bool) -> list[tuple[int, int]]:
    """(index, size) or (old, new) pairs of the random sizes: the ends, the middle,
    and a random one."""
    rng = random.Random(9162)
    last = 1 if inclusion else 0
    return [
        (small, size)
        for size in RANDOM_SIZES
        for small in sorted({0, 1, size // 2, size - 1, size, rng.randint(0, size)})
        if 0 <= small <= size - last
    ]


# --- Hashes and known vectors. ---


def test_leaf_and_node_hashes_carry_the_rfc_6962_prefixes() -> None:
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert (
        node_hash(b"a" * 32, b"b" * 32)
        == hashlib.sha256(b"\x01" + b"a" * 32 + b"b" * 32).digest()
    )
    assert HASH_SIZE == 32


def test_the_empty_tree_hashes_to_sha256_of_nothing() -> None:
    expected = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

    assert EMPTY_ROOT.hex() == expected
    assert MemoryTree().root() == EMPTY_ROOT
    assert fold([]) == EMPTY_ROOT
    assert root_nodes(0) == []


# Certificate Transparency's reference tree (RFC 6962 test data, as kept in
# transparency-dev/merkle): eight leaves and the root at each size.
CT_LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_HASHES = {  # the proof hashes of the reference vectors, by a letter each
    "a": "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
    "b": "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
    "c": "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
    "d": "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
    "e": "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
    "f": "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "g": "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "h": "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "i": "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
    "j": "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
}
# (index, size, proof) and (old, new, proof), the proof as letters of CT_HASHES.
CT_INCLUSION = [(0, 1, ""), (0, 8, "abc"), (5, 8, "def"), (2, 3, "g"), (1, 5, "hbd")]
CT_CONSISTENCY = [(1, 1, ""), (1, 8, "abc"), (6, 8, "ief"), (2, 5, "bd"), (6, 7, "ijf")]


@pytest.fixture(scope="module")
def ct_tree() -> MemoryTree:
    tree = MemoryTree()
    for entry in CT_LEAVES:
        tree.append(leaf_hash(entry))
    return tree


def test_roots_match_certificate_transparency_reference_roots(
    ct_tree: MemoryTree,
) -> None:
    assert [ct_tree.root(size).hex() for size in range(1, 9)] == CT_ROOTS


@pytest.mark.parametrize(("index", "size", "expected"), CT_INCLUSION)
def test_inclusion_proofs_match_the_reference_vectors(
    ct_tree: MemoryTree, index: int, size: int, expected: str
) -> None:
    got = ct_tree.inclusion_proof(index, size)

    assert [h.hex() for h in got] == [CT_HASHES[letter] for letter in expected]
    assert verify_inclusion(
        index, size, ct_tree.node(0, index), got, ct_tree.root(size)
    )


@pytest.mark.parametrize(("old", "new", "expected"), CT_CONSISTENCY)
def test_consistency_proofs_match_the_reference_vectors(
    ct_tree: MemoryTree, old: int, new: int, expected: str
) -> None:
    got = ct_tree.consistency_proof(old, new)

    assert [h.hex() for h in got] == [CT_HASHES[letter] for letter in expected]
    assert verify_consistency(old, new, ct_tree.root(old), ct_tree.root(new), got)


# --- The tree against the oracle: every size to 64, then random sizes. ---


@pytest.mark.parametrize("size", [*range(65), *RANDOM_SIZES])
def test_roots_agree_with_the_rfc_definition(size: int) -> None:
    expected = mth(DATA[:size])

    assert TREE.root(size) == expected
    assert fold([oracle_node(node) for node in root_nodes(size)]) == expected


@pytest.mark.parametrize("size", range(1, 65))
def test_every_inclusion_proof_up_to_64_leaves_agrees_and_verifies(size: int) -> None:
    for index in range(size):
        _check_inclusion(index, size)


@pytest.mark.parametrize("size", range(65))
def test_every_consistency_proof_up_to_64_leaves_agrees_and_verifies(
    size: int,
) -> None:
    for old in range(size + 1):
        _check_consistency(old, size)


@pytest.mark.parametrize(("index", "size"), _random_pairs(inclusion=True))
def test_inclusion_proofs_of_large_random_trees_agree_and_verify(
    index: int, size: int
) -> None:
    _check_inclusion(index, size)


@pytest.mark.parametrize(("old", "new"), _random_pairs(inclusion=False))
def test_consistency_proofs_of_large_random_trees_agree_and_verify(
    old: int, new: int
) -> None:
    _check_consistency(old, new)


def _check_inclusion(index: int, size: int) -> None:
    expected = path(index, DATA[:size])

    assert TREE.inclusion_proof(index, size) == expected
    assert folded(inclusion_nodes(index, size)) == expected
    assert verify_inclusion(
        index, size, leaf_hash(DATA[index]), expected, mth(DATA[:size])
    )


def _check_consistency(old: int, new: int) -> None:
    expected = proof(old, DATA[:new])

    assert TREE.consistency_proof(old, new) == expected
    assert folded(consistency_nodes(old, new)) == expected
    assert verify_consistency(old, new, mth(DATA[:old]), mth(DATA[:new]), expected)


# --- Falsified proofs (GHSA-672p-m5jq-mrh8: verifiers that took forged proofs). ---

FALSIFY_SIZES = [*range(1, 33), 63, 64, 65, 127, 128, 129, 1_000, 2_000]


def flipped(value: bytes) -> list[bytes]:
    """The value with each of its bytes changed in turn (one bit, a different one
    at each position)."""
    return [
        value[:i] + bytes([value[i] ^ 1 << i % 8]) + value[i + 1 :]
        for i in range(len(value))
    ]


def altered_lists(hashes: list[bytes]) -> list[list[bytes]]:
    """The list with each byte of each element flipped, each element removed, and
    an element inserted at each place."""
    out = []
    for i, element in enumerate(hashes):
        out += [[*hashes[:i], bad, *hashes[i + 1 :]] for bad in flipped(element)]
        out.append(hashes[:i] + hashes[i + 1 :])
    for i in range(len(hashes) + 1):
        for extra in {EMPTY_ROOT, leaf_hash(b"forged"), *hashes[i - 1 : i + 1]}:
            out.append([*hashes[:i], extra, *hashes[i:]])
    return out


def _indexes(size: int) -> list[int]:
    return list(range(size)) if size <= 64 else [0, 1, size // 2, size - 2, size - 1]


@pytest.mark.parametrize("size", FALSIFY_SIZES)
def test_an_inclusion_proof_with_any_byte_or_element_changed_is_refused(
    size: int,
) -> None:
    root = TREE.root(size)
    for index in _indexes(size):
        leaf, honest = TREE.node(0, index), TREE.inclusion_proof(index, size)
        for bad in altered_lists(honest):
            assert not verify_inclusion(index, size, leaf, bad, root), (index, bad)
        for bad_leaf in flipped(leaf):
            assert not verify_inclusion(index, size, bad_leaf, honest, root)
        for bad_root in flipped(root):
            assert not verify_inclusion(index, size, leaf, honest, bad_root)


@pytest.mark.parametrize("size", FALSIFY_SIZES)
def test_an_inclusion_proof_is_refused_for_another_index_or_size(size: int) -> None:
    for index in _indexes(size):
        leaf, honest = TREE.node(0, index), TREE.inclusion_proof(index, size)
        for other in (index - 1, index + 1, index ^ 2):
            assert not verify_inclusion(other, size, leaf, honest, TREE.root(size))
        for other in (size - 1, size + 1, size * 2, size // 2):
            assert not verify_inclusion(index, other, leaf, honest, TREE.root(other))


@pytest.mark.parametrize("new", FALSIFY_SIZES)
def test_a_consistency_proof_with_any_byte_or_element_changed_is_refused(
    new: int,
) -> None:
    new_root = TREE.root(new)
    for old in _indexes(new)[1:]:
        old_root, honest = TREE.root(old), TREE.consistency_proof(old, new)
        for bad in altered_lists(honest):
            assert not verify_consistency(old, new, old_root, new_root, bad), old
        for bad_old in flipped(old_root):
            assert not verify_consistency(old, new, bad_old, new_root, honest)
        for bad_new in flipped(new_root):
            assert not verify_consistency(old, new, old_root, bad_new, honest)
        assert not verify_consistency(old, new, new_root, old_root, honest)


@pytest.mark.parametrize("new", FALSIFY_SIZES)
def test_a_consistency_proof_is_refused_for_other_sizes(new: int) -> None:
    for old in _indexes(new)[1:]:
        roots, honest = (
            (TREE.root(old), TREE.root(new)),
            TREE.consistency_proof(old, new),
        )
        for other in (old - 1, old + 1, old ^ 2):
            assert not verify_consistency(other, new, *roots, honest), (old, other)
            if 0 < other <= new:
                assert not verify_consistency(
                    other, new, TREE.root(other), roots[1], honest
                )
        for other in (new - 1, new + 1, new * 2, new // 2):
            assert not verify_consistency(
                old, other, roots[0], TREE.root(other), honest
            )


def test_a_size_is_bound_to_its_root_by_the_signed_checkpoint_not_by_the_proof() -> (
    None
):
    # RFC 9162's verifier takes the proof of leaf 0 in the tree of 3 leaves for the
    # tree of 4 when it is given the root of 3: the path has the same shape. No tree
    # of 4 leaves has that root, so callers take size and root from one checkpoint.
    honest = TREE.inclusion_proof(0, 3)

    assert verify_inclusion(0, 4, TREE.node(0, 0), honest, TREE.root(3))
    assert not verify_inclusion(0, 4, TREE.node(0, 0), honest, TREE.root(4))


# --- Edge cases, after transparency-dev/merkle's "additional" vectors. ---

E = EMPTY_ROOT
R1, R2 = leaf_hash(b"root 1"), leaf_hash(b"root 2")
SHORT = b"don't care"


@pytest.mark.parametrize(
    ("sizes", "roots", "hashes", "holds"),
    [
        ((0, 0), (E, E), [], True),
        ((0, 0), (E, R2), [], False),
        ((0, 0), (R1, R1), [], False),  # the empty tree has the empty root
        ((0, 0), (E, E), [E], False),
        ((0, 1), (E, R2), [], True),
        ((0, 1), (R1, R2), [], False),
        ((0, 1), (E, E), [E], False),
        ((1, 1), (R1, R1), [], True),
        ((1, 1), (R1, R2), [], False),
        ((1, 1), (E, E), [E], False),
        ((1, 1), (SHORT, SHORT), [], False),  # hashes are 32 bytes
        ((1, 2), (R1, R2), [], False),
        ((1, 0), (R1, R2), [], False),
        ((2, 1), (R1, R2), [], False),
    ],
)
def test_consistency_edge_cases(
    sizes: tuple[int, int],
    roots: tuple[bytes, bytes],
    hashes: list[bytes],
    holds: bool,
) -> None:
    assert verify_consistency(*sizes, *roots, hashes) is holds


@pytest.mark.parametrize(
    ("index", "size", "leaf", "root", "holds"),
    [
        (0, 1, R1, R1, True),
        (0, 1, R1, R2, False),
        (0, 1, b"", R1, False),
        (0, 1, R1, b"", False),
        (0, 0, R1, E, False),
        (1, 0, R1, E, False),
        (2, 1, R1, R1, False),
    ],
)
def test_inclusion_edge_cases(
    index: int, size: int, leaf: bytes, root: bytes, holds: bool
) -> None:
    assert verify_inclusion(index, size, leaf, [], root) is holds


HOSTILE_NUMBERS: list[object] = [-1, -(2**70), 2**200, True, 1.0, "3", None]
HOSTILE_PROOFS: list[object] = [
    None,
    b"x" * 32,
    "x" * 32,
    [b"x" * 31],
    [b"x" * 33],
    [bytearray(32)],
    [None],
    [b"x" * 32] * 10_000,
    iter([b"x" * 32]),
]


def test_verifiers_refuse_hostile_input_without_raising() -> None:
    leaf, root = TREE.node(0, 5), TREE.root(9)
    honest = TREE.inclusion_proof(5, 9)
    for number in HOSTILE_NUMBERS:
        assert not verify_inclusion(number, 9, leaf, honest, root)  # type: ignore[arg-type]
        assert not verify_inclusion(5, number, leaf, honest, root)  # type: ignore[arg-type]
        roots, consistency = (TREE.root(3), root), TREE.consistency_proof(3, 9)
        assert not verify_consistency(number, 9, *roots, consistency)  # type: ignore[arg-type]
        assert not verify_consistency(3, number, *roots, consistency)  # type: ignore[arg-type]
    for hostile in HOSTILE_PROOFS:
        assert not verify_inclusion(5, 9, leaf, hostile, root)  # type: ignore[arg-type]
        assert not verify_consistency(3, 9, TREE.root(3), root, hostile)  # type: ignore[arg-type]
    for hash_like in (
        None,
        b"",
        leaf[:31],
        leaf + b"\x00",
        bytearray(leaf),
        leaf.hex(),
    ):
        assert not verify_inclusion(5, 9, hash_like, honest, root)  # type: ignore[arg-type]
        assert not verify_inclusion(5, 9, leaf, honest, hash_like)  # type: ignore[arg-type]


def test_huge_sizes_are_refused_quickly() -> None:
    size = 2**4000
    forged = [leaf_hash(b"forged")] * 8000

    assert not verify_inclusion(size - 1, size, R1, forged, R2)
    assert not verify_consistency(size // 3, size, R1, R2, forged)


# --- Node addressing, the frontier and the in-memory tree. ---


def test_range_nodes_split_a_range_into_aligned_subtrees_largest_first() -> None:
    assert range_nodes(0, 7) == [(2, 0), (1, 2), (0, 6)]
    assert range_nodes(8, 13) == [(2, 2), (0, 12)]
    assert range_nodes(16, 32) == [(4, 1)]
    assert range_nodes(5, 5) == []
    assert root_nodes(2_000) == range_nodes(0, 2_000)


@pytest.mark.parametrize(("start", "end"), [(-1, 3), (4, 3), (2, 7), (1, 3)])
def test_range_nodes_refuse_a_range_no_proof_uses(start: int, end: int) -> None:
    with pytest.raises(ValueError, match="leaf range"):
        range_nodes(start, end)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: inclusion_nodes(3, 3), "no leaf 3 in a tree of 3"),
        (lambda: inclusion_nodes(-1, 3), "no leaf -1"),
        (lambda: consistency_nodes(4, 3), "no consistency proof from 4 to 3"),
        (lambda: consistency_nodes(-1, 3), "need 0 <= old_size <= new_size"),
        (lambda: TREE.inclusion_proof(0, LARGEST + 1), "has 4001 leaves"),
        (lambda: MemoryTree().node(0, 0), "not complete"),
        (lambda: TREE.node(12, 1), "not complete"),
    ],
)
def test_proof_shapes_refuse_impossible_arguments(
    call: Callable[[], object], match: str
) -> None:
    with pytest.raises((ValueError, KeyError), match=match):
        call()


def test_new_nodes_over_a_frontier_build_the_same_nodes_as_the_full_tree() -> None:
    frontier: dict[NodeId, bytes] = {}
    for size in range(300):
        completed = new_nodes(size, TREE.node(0, size), frontier.__getitem__)

        assert completed[0] == ((0, size), TREE.node(0, size))
        assert all(TREE.node(*node) == value for node, value in completed)
        frontier.update(completed)
        frontier = {node: frontier[node] for node in root_nodes(size + 1)}
        assert fold(list(frontier.values())) == TREE.root(size + 1)


def test_new_nodes_completes_one_parent_per_trailing_one_bit() -> None:
    def lookup(node: NodeId) -> bytes:
        return TREE.node(*node)

    assert [node for node, _ in new_nodes(6, TREE.node(0, 6), lookup)] == [(0, 6)]
    assert [node for node, _ in new_nodes(7, TREE.node(0, 7), lookup)] == [
        (0, 7),
        (1, 3),
        (2, 1),
        (3, 0),
    ]


def test_a_frontier_gives_the_root_of_every_size_it_passes() -> None:
    tree, frontier = MemoryTree(), Frontier()
    for n in range(300):
        leaf = leaf_hash(n.to_bytes(4, "big"))
        assert frontier.root() == tree.root()
        tree.append(leaf)
        frontier.append(leaf)
    assert (frontier.size, frontier.root()) == (300, tree.root())
