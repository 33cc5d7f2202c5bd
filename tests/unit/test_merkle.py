"""RFC 6962 Merkle tree: roots, inclusion and consistency proofs against the RFC's definitions."""

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from settlement.merkle import (
    EMPTY_ROOT,
    MerkleTree,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)


def mth(leaves):
    """MTH(D[n]) exactly as RFC 6962 §2.1 defines it, recursively: the reference."""
    n = len(leaves)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return leaves[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def leaves(n):
    return [leaf_hash(str(i).encode()) for i in range(n)]


def test_hashes_are_domain_separated():
    assert leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert node_hash(b"a", b"b") == hashlib.sha256(b"\x01ab").digest()
    assert MerkleTree().root() == hashlib.sha256(b"").digest()


def test_a_known_root():
    # Certificate Transparency's test vector: the 8 leaves of RFC 6962's reference test data.
    data = [
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
    tree = MerkleTree(leaf_hash(d) for d in data)
    assert tree.root().hex() == "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    assert tree.root(3).hex() == "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77"


def test_every_root_matches_the_rfc_definition():
    all_leaves = leaves(70)
    tree = MerkleTree(all_leaves)
    for n in range(71):
        assert tree.root(n) == mth(all_leaves[:n])


def test_every_inclusion_proof_verifies_and_a_wrong_one_does_not():
    all_leaves = leaves(33)
    tree = MerkleTree(all_leaves)
    for size in range(1, 34):
        root = tree.root(size)
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            assert verify_inclusion(all_leaves[index], index, size, proof, root)
            assert not verify_inclusion(leaf_hash(b"other"), index, size, proof, root)
            if size > 1:
                assert (
                    not verify_inclusion(all_leaves[index], (index + 1) % size, size, proof, root)
                    or all_leaves[index] == all_leaves[(index + 1) % size]
                )
                bad = [bytes(32), *proof[1:]] if proof else [bytes(32)]
                assert not verify_inclusion(all_leaves[index], index, size, bad, root)


def test_every_consistency_proof_verifies_and_a_wrong_one_does_not():
    tree = MerkleTree(leaves(40))
    for second in range(1, 41):
        for first in range(1, second + 1):
            proof = tree.consistency_proof(first, second)
            r1, r2 = tree.root(first), tree.root(second)
            assert verify_consistency(first, second, r1, r2, proof), (first, second)
            if first < second:
                assert not verify_consistency(first, second, r2, r1, proof)
                tampered = [bytes(32), *proof[1:]]
                assert not verify_consistency(first, second, r1, r2, tampered)
                assert not verify_consistency(first, second, r1, r2, [])


@given(st.lists(st.binary(max_size=8), min_size=1, max_size=80), st.data())
def test_proofs_for_random_trees(entries, data):
    hashed = [leaf_hash(e) for e in entries]
    tree = MerkleTree(hashed)
    size = data.draw(st.integers(1, len(hashed)))
    index = data.draw(st.integers(0, size - 1))
    first = data.draw(st.integers(1, size))
    assert tree.root(size) == mth(hashed[:size])
    assert verify_inclusion(
        hashed[index], index, size, tree.inclusion_proof(index, size), tree.root(size)
    )
    assert verify_consistency(
        first, size, tree.root(first), tree.root(size), tree.consistency_proof(first, size)
    )


@given(st.lists(st.integers(0, 9), max_size=12))
def test_extending_in_chunks_equals_appending_one_by_one(chunks):
    one_by_one, chunked = MerkleTree(), MerkleTree()
    counter = 0
    for size in chunks:
        batch = leaves(counter + size)[counter:]
        counter += size
        for leaf in batch:
            one_by_one.append(leaf)
        chunked.extend(batch)
        assert chunked.levels == one_by_one.levels


def test_the_platform_hashes_and_inclusion_check_are_settlements():
    """The disputes room checks bundles with `exchange.platform.merkle` (it may not import
    settlement): the same functions, and they verify every proof settlement's tree makes."""
    from exchange.platform import merkle as floor
    from settlement import merkle

    assert (merkle.leaf_hash, merkle.node_hash, merkle.verify_inclusion) == (
        floor.leaf_hash, floor.node_hash, floor.verify_inclusion,
    )  # fmt: skip
    all_leaves = [floor.leaf_hash(str(i).encode()) for i in range(21)]
    tree = MerkleTree(all_leaves)
    for size in (1, 2, 7, 8, 21):
        root = tree.root(size)
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            assert floor.verify_inclusion(all_leaves[index], index, size, proof, root)
            assert not floor.verify_inclusion(all_leaves[index], index, size, proof, root[::-1])
