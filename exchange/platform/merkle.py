"""RFC 6962 / RFC 9162 Merkle hashes and inclusion proofs: the part any room may check.

Leaf hash = SHA-256(0x00 || entry), node hash = SHA-256(0x01 || left || right); the
verification is RFC 9162 §2.1.3.2 word for word. Settlement's tree (`settlement.merkle`) builds
on these; a room that may not import settlement (the disputes room checking an evidence
bundle's ledger entries) verifies with them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> bool:
    """RFC 9162 §2.1.3.2."""
    if index >= size or index < 0:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not (fn & 1 or fn == 0):
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == root
