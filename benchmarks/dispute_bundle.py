"""Time writing and verifying a dispute's evidence bundle (issue 21: ≤ 2 s and ≤ 1 s).

The case of the acceptance criterion: a usage-records JSON lines item of 10,000 records and 19
more files, 50 MiB in all, registered in a ledger of 100,000 entries. Writing goes to a file
(what `GET /v1/disputes/{id}/bundle` streams) and to memory; verification reads the file (memory
mapped) and the bytes. Figures, not a test: ``uv run python -m benchmarks.dispute_bundle``.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import IO, Any

from exchange.disputes.bundle import (
    MANIFEST_JWS_TYPE,
    BundleItem,
    evidence_digest,
    verify_bundle,
    write_bundle,
)
from exchange.platform.canonical import canonical_json
from exchange.platform.disputes import LedgerProofs
from exchange.platform.merkle import leaf_hash
from exchange.platform.signing import SigningKey, _kid, public_jwk
from settlement.merkle import MerkleTree

MIB = 1 << 20


def usage_records(count: int) -> bytes:
    grant = str(uuid.uuid4())
    lines = (
        canonical_json({
            "id": str(uuid.UUID(int=i + 1)), "grant_id": grant,
            "served_at": f"2026-02-{1 + i * 27 // count:02d}T10:{i % 60:02d}:00.000000Z",
            "units": 1, "cost_millifen": 1500, "period_seq": 1 + i * 4 // count,
            "detail": {"route": "GET /v1/weather", "status": 200,
                       "sha256": hashlib.sha256(i.to_bytes(8, "big")).hexdigest()},
        }) + b"\n"
        for i in range(count)
    )  # fmt: skip
    return b"".join(lines)


def make_case(
    folder: Path, *, files: int, total: int, records: int, ledger_size: int
) -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = Ed25519PrivateKey.generate()
    key = SigningKey(_kid(private.public_key()), private)
    dispute_id, trade_id = str(uuid.uuid4()), str(uuid.uuid4())
    usage = usage_records(records)
    rest = (total - len(usage)) // (files - 1)
    bodies = [usage] + [os.urandom(rest) for _ in range(files - 1)]
    leaves = [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(ledger_size)]
    seqs = list(range(ledger_size - 3 * files, ledger_size, 3))  # among the others' entries
    items, entries = [], {}
    for index, (body, seq) in enumerate(zip(bodies, seqs, strict=True)):
        sha = hashlib.sha256(body).hexdigest()
        path = folder / sha
        path.write_bytes(body)
        entry = canonical_json({
            "seq": seq, "prev": leaves[seq - 1].hex(), "exchange": "DX", "trade_id": trade_id,
            "step": "evidence", "contract_digest": "sha256:" + "ab" * 32, "product_code": "DX-1",
            "buyer": {"org_id": str(uuid.uuid4()), "uscc": None},
            "seller": {"org_id": str(uuid.uuid4()), "uscc": None}, "price_fen": 0, "fee_fen": 0,
            "movement_id": None, "at": "2026-02-20T10:00:00.000000Z",
            "statement_digest": evidence_digest(sha), "dispute_id": dispute_id,
        })  # fmt: skip
        leaves[seq] = leaf_hash(entry)
        entries[seq] = entry
        items.append(BundleItem(
            index=index, kind="usage" if index == 0 else "data_sample",
            name="usage-records.jsonl" if index == 0 else f"sample-{index}.bin",
            media_type="application/x-ndjson" if index == 0 else "application/octet-stream",
            sha256=sha, size=len(body), submitter="exchange" if index == 0 else "buyer",
            submitter_org_id=None, submitted_at="2026-02-20T10:00:00.000000Z", ledger_seq=seq,
            path=path,
        ))  # fmt: skip
    tree = MerkleTree(leaves)
    head = key.sign_compact(
        {"exchange": "DX", "tree_size": tree.size, "root_hash": tree.root().hex(),
         "timestamp": "2026-02-21T00:00:00.000000Z"}, typ="dataex-tree-head+jws",
    )  # fmt: skip
    proofs = LedgerProofs(head, tuple(
        (entries[seq], tuple(p.hex() for p in tree.inclusion_proof(seq, tree.size)))
        for seq in seqs
    ))  # fmt: skip
    return {
        "arguments": {
            "exchange": "DX",
            "dispute": {"id": dispute_id, "trade_id": trade_id},
            "items": items,
            "proofs": proofs,
            "exported_at": "2026-02-21T08:00:00.000000Z",
            "sign": functools.partial(key.sign_detached, typ=MANIFEST_JWS_TYPE),
        },
        "jwks": {"keys": [public_jwk(private.public_key(), key.kid)]},
        "usage_bytes": len(usage),
    }


def timed(action: Any, repeat: int) -> list[float]:
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - started)
    return seconds


def bench_bundle(
    out: IO[str], *, files: int = 20, total_mib: int = 50, records: int = 10_000,
    ledger_size: int = 100_000, repeat: int = 5,
) -> dict[str, Any]:  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="dataex-bundle-") as folder:
        case = make_case(Path(folder), files=files, total=total_mib * MIB, records=records,
                         ledger_size=ledger_size)  # fmt: skip
        arguments, jwks = case["arguments"], case["jwks"]
        target = Path(folder) / "bundle.tar"

        def to_file() -> None:
            with target.open("wb") as handle:
                write_bundle(handle, **arguments)

        def to_memory() -> bytes:
            buffer = io.BytesIO()
            write_bundle(buffer, **arguments)
            return buffer.getvalue()

        figures = {
            "write_file": timed(to_file, repeat),
            "write_memory": timed(to_memory, repeat),
        }
        data = target.read_bytes()
        figures["verify_file"] = timed(lambda: verify_bundle(target, jwks), repeat)
        figures["verify_bytes"] = timed(lambda: verify_bundle(data, jwks), repeat)
        size = target.stat().st_size
    result = {
        "files": files, "bundle_bytes": size, "usage_records": records,
        "usage_bytes": case["usage_bytes"], "ledger_size": ledger_size,
        **{name: {"median": statistics.median(s), "best": min(s)} for name, s in figures.items()},
    }  # fmt: skip
    out.write(
        f"bundle of {files} items, {size / MIB:.1f} MiB (usage: {records} records,"
        f" {case['usage_bytes'] / MIB:.1f} MiB), ledger of {ledger_size} entries:\n"
    )
    for name, seconds in figures.items():
        out.write(f"  {name:<13} median {statistics.median(seconds):.3f} s,"
                  f" best {min(seconds):.3f} s ({repeat} runs)\n")  # fmt: skip
    return result


if __name__ == "__main__":
    json.dump(bench_bundle(sys.stdout), sys.stdout, indent=1)
    sys.stdout.write("\n")
