"""RFC 6962 / RFC 9162 Merkle trees: leaf and node hashes, roots, inclusion and consistency proofs.

Pure functions and one append-only in-memory tree. Leaf hash = SHA-256(0x00 || entry), node
hash = SHA-256(0x01 || left || right), the tree of n leaves splits at the largest power of two
smaller than n. The verification algorithms are RFC 9162 §2.1.3.2 and §2.1.4.2 word for word.
The hashes and the inclusion check live on the floor (`exchange.platform.merkle`), where rooms
that may not import settlement find them; they are re-exported here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from exchange.platform.merkle import leaf_hash, node_hash, verify_inclusion

__all__ = [
    "EMPTY_ROOT",
    "MerkleTree",
    "leaf_hash",
    "node_hash",
    "root_of",
    "verify_consistency",
    "verify_inclusion",
]

EMPTY_ROOT = hashlib.sha256(b"").digest()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """Leaves appended in order; complete aligned subtrees are kept per level, so the hash of
    any range the RFC's recursion asks for costs O(log n) node hashes."""

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        self.levels: list[list[bytes]] = [[]]
        for leaf in leaves:
            self.append(leaf)

    @property
    def size(self) -> int:
        return len(self.levels[0])

    def leaf(self, index: int) -> bytes:
        return self.levels[0][index]

    def append(self, leaf: bytes) -> None:
        levels = self.levels
        levels[0].append(leaf)
        level = 0
        while len(levels[level]) % 2 == 0:
            row = levels[level]
            if level + 1 == len(levels):
                levels.append([])
            levels[level + 1].append(node_hash(row[-2], row[-1]))
            level += 1

    def extend(self, leaves: Sequence[bytes]) -> None:
        """`append` for many leaves: each level's new nodes in one pass."""
        if not leaves:
            return
        levels = self.levels
        levels[0].extend(leaves)
        level = 0
        while len(levels[level]) >= 2:
            row = levels[level]
            if level + 1 == len(levels):
                levels.append([])
            parents = levels[level + 1]
            start = 2 * len(parents)
            sha256 = hashlib.sha256
            parents.extend(
                sha256(b"\x01" + row[i] + row[i + 1]).digest()
                for i in range(start, len(row) - 1, 2)
            )
            level += 1

    def subtree(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) for the ranges the RFC recursion produces (start aligned)."""
        n = end - start
        if n <= 0:
            return EMPTY_ROOT
        if n & (n - 1) == 0:  # a complete subtree: kept
            level = n.bit_length() - 1
            return self.levels[level][start >> level]
        k = _split(n)
        return node_hash(self.subtree(start, start + k), self.subtree(start + k, end))

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        if size > self.size:
            raise ValueError(f"the tree has {self.size} leaves, not {size}")
        return self.subtree(0, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """PATH(index, D[0:size]) (RFC 6962 §2.1.1)."""
        if not 0 <= index < size <= self.size:
            raise ValueError(f"no leaf {index} in a tree of {size}")
        return self._path(index, 0, size)

    def _path(self, m: int, start: int, end: int) -> list[bytes]:
        n = end - start
        if n == 1:
            return []
        k = _split(n)
        if m < k:
            return [*self._path(m, start, start + k), self.subtree(start + k, end)]
        return [*self._path(m - k, start + k, end), self.subtree(start, start + k)]

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        """PROOF(first, D[0:second]) (RFC 6962 §2.1.2)."""
        if not 0 < first <= second <= self.size:
            raise ValueError(f"no consistency proof from {first} to {second}")
        return self._subproof(first, 0, second, True)

    def _subproof(self, m: int, start: int, end: int, complete: bool) -> list[bytes]:
        n = end - start
        if m == n:
            return [] if complete else [self.subtree(start, end)]
        k = _split(n)
        if m <= k:
            return [*self._subproof(m, start, start + k, complete), self.subtree(start + k, end)]
        return [*self._subproof(m - k, start + k, end, False), self.subtree(start, start + k)]


def root_of(leaves: Sequence[bytes]) -> bytes:
    return MerkleTree(leaves).root()


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> bool:
    """RFC 9162 §2.1.4.2 (with the trivial cases: equal sizes prove equal roots)."""
    if first <= 0 or first > second:
        return False
    if first == second:
        return not proof and first_root == second_root
    if not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0
