"""``dataex bench disputes``: a dispute's evidence bundle, exported and verified (issue 21).

The case of the acceptance criterion, end to end on a scratch exchange of its own (API,
relay, settlement and delivery as separate processes, as `dataex up` runs them):

1. a seller lists a product, a buyer buys it and its grants become active (through the API);
2. the trade's API grant gets ``--records`` usage records (10,000), written straight into
   ``usage_records`` as the gateway's group commit writes them — serving 10,000 real calls would
   measure the gateway, which `dataex bench delivery` does;
3. the buyer opens a dispute (the exchange attaches its system evidence: the contract, the
   listing, grants, token issues, the usage records as JSON lines, the ledger receipt) and
   uploads ``--files`` files of ``--total-mib`` MiB in all through the API;
4. the bundle is fetched ``--repeat`` times through ``GET /v1/disputes/{id}/bundle`` (the API
   process builds it: inclusion proofs, a signed tree head, the signed manifest, the tar), and
   verified as many times offline, as ``dataex dispute verify-bundle`` does, with the JWKS.

Baselines in the same run, on the same bytes: a plain tar of the same files (Python's tarfile,
nothing signed or proved: what an archive costs at all), and SHA-256 over the bundle (what
reading and hashing it costs at all). Targets: export ≤ 2 s, verify ≤ 1 s.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import asyncpg

from benchmarks.delivery import FILE_NAME, Processes, _await_active, _setup, _spawn, _wait_answering
from benchmarks.scratch import UNLIMITED, drop_scratch, free_port, scratch_settings
from benchmarks.trades import _Http
from exchange.disputes.bundle import verify_bundle
from exchange.platform.settings import Settings

if TYPE_CHECKING:
    import httpx  # the bench extra: imported where the requests are made

MIB = 1 << 20
EXPORT_TARGET_S = 2.0
VERIFY_TARGET_S = 1.0


def _seconds(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "best": round(min(values), 3),
            "worst": round(max(values), 3)}  # fmt: skip


def _usage_rows(grant: uuid.UUID, count: int, start: datetime) -> list[tuple[Any, ...]]:
    """What the gateway writes for ``count`` served calls: a GET each, 1 request and some
    bytes, the SHA-256 of the answer it served."""
    rows: list[tuple[Any, ...]] = []
    for i in range(count):
        body = i.to_bytes(8, "big") * 64
        detail = {"method": "GET", "path": f"/weather/{i % 97}", "status": 200,
                  "sha256": hashlib.sha256(body).hexdigest()}  # fmt: skip
        rows.append((
            uuid.uuid4(), grant, start + timedelta(milliseconds=i), json.dumps(
                {"requests": 1, "bytes": len(body)}), [], 0, json.dumps(detail),
        ))  # fmt: skip
    return rows


async def _usage(settings: Settings, grant: uuid.UUID, count: int) -> float:
    started = time.perf_counter()
    conn = await asyncpg.connect(settings.database_url)
    try:
        await conn.copy_records_to_table(
            "usage_records",
            records=_usage_rows(grant, count, datetime.now(UTC) - timedelta(hours=1)),
            columns=["id", "grant_id", "served_at", "units", "leases", "cost_millifen", "detail"],
        )
    finally:
        await conn.close()
    return time.perf_counter() - started


def _files(folder: Path, count: int, total: int) -> list[Path]:
    paths = []
    for i in range(count):
        path = folder / f"evidence-{i:02d}.bin"
        path.write_bytes(os.urandom(total // count))
        paths.append(path)
    return paths


def _plain_tar(paths: list[Path], usage: bytes) -> float:
    """A tar of the same bytes in memory, nothing signed, proved or looked up."""
    started = time.perf_counter()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("usage-records.jsonl")
        info.size = len(usage)
        tar.addfile(info, io.BytesIO(usage))
        for path in paths:
            tar.add(path, arcname=path.name)
    return time.perf_counter() - started


def _plain_hash(data: bytes) -> float:
    started = time.perf_counter()
    hashlib.sha256(data).hexdigest()
    return time.perf_counter() - started


async def bench_disputes(live: Settings, args: Any, out: TextIO) -> int:
    tag = uuid.uuid4().hex[:8]
    state = Path(tempfile.mkdtemp(prefix="dataex-bench-disputes-"))
    settings, admin = await scratch_settings(
        live, f"disputes_{tag}", bootstrap="always", state_dir=state, http_host="127.0.0.1",
        http_port=free_port(), api_workers=1, **UNLIMITED,
    )  # fmt: skip
    assert admin
    procs = Processes()
    env = {**os.environ, **settings.to_env()}
    try:
        for part in ("api", "relay", "settlement", "delivery"):
            procs.children[part] = _spawn(
                [sys.executable, "-m", "exchange.cli", "serve", part], env
            )
        url = f"http://127.0.0.1:{settings.http_port}"
        await _wait_answering(f"{url}/health/ready", procs.children["api"])
        report = await _measure(args, settings, admin, url, state, out)
    finally:
        procs.stop()
        await drop_scratch(live, settings)
        shutil.rmtree(state, ignore_errors=True)
    report["targets"] = {
        "export_s": EXPORT_TARGET_S, "verify_s": VERIFY_TARGET_S,
        "export_met": report["export_s"]["median"] <= EXPORT_TARGET_S,
        "verify_met": report["verify_s"]["median"] <= VERIFY_TARGET_S,
    }  # fmt: skip
    _print(report, out)
    target = Path(args.out) / f"disputes-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    out.write(f"\nwrote {target}\n")
    return 0


async def _measure(
    args: Any, settings: Settings, admin: str, url: str, state: Path, out: TextIO
) -> dict[str, Any]:
    lean = _Http(url, 2)
    try:
        out.write(f"listing a product and buying it at {url} …\n")
        declared = {"name": FILE_NAME, "sha256": "0" * 64, "size_bytes": 1}
        market = await _setup(lean, admin, declared)
        await _await_active(lean, market)
    finally:
        await lean.close()
    import httpx  # the bench extra

    grant = uuid.UUID(market.grants["quota/api"])
    out.write(f"writing {args.records:,} usage records of grant {grant} …\n")
    usage_s = await _usage(settings, grant, args.records)
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        buyer = {"Authorization": f"Bearer {market.buyer}"}
        trade = (await http.get(f"/v1/grants/{grant}", headers=buyer)).json()["trade_id"]
        started = time.perf_counter()
        opened = await http.post(
            f"/v1/trades/{trade}/disputes", headers=buyer,
            json={"reason": "not_as_described", "claimed_fen": 50,
                  "statement": "压测:数据与说明不符"},
        )  # fmt: skip
        open_s = time.perf_counter() - started
        if opened.status_code != 201:
            raise RuntimeError(f"opening the dispute: {opened.status_code} {opened.text}")
        dispute = opened.json()["id"]
        folder = state / "bench-files"
        folder.mkdir()
        paths = await asyncio.to_thread(_files, folder, args.files, args.total_mib * MIB)
        out.write(f"uploading {args.files} files, {args.total_mib} MiB in all …\n")
        upload_started = time.perf_counter()
        for path in paths:
            body = await asyncio.to_thread(path.read_bytes)
            answer = await http.post(
                f"/v1/disputes/{dispute}/evidence", params={"type": "report", "name": path.name},
                content=body, headers=buyer | {"Content-Type": "application/octet-stream"},
            )  # fmt: skip
            if answer.status_code not in (200, 201):
                raise RuntimeError(f"uploading {path.name}: {answer.status_code} {answer.text}")
        upload_s = time.perf_counter() - upload_started
        jwks = (await http.get("/.well-known/jwks.json")).json()
        out.write(f"exporting and verifying the bundle {args.repeat} times …\n")
        export, verify, data, verified = await _rounds(http, dispute, buyer, jwks, args.repeat)
        items = verified.manifest["items"]
        usage = next(i for i in items if i["name"] == "usage-records.jsonl")
        usage_bytes = _member(data, usage["path"])
        lines = usage_bytes.count(b"\n")
        if lines != args.records:
            raise RuntimeError(f"the bundle's usage item has {lines} records, not {args.records}")
    plain_tar = [
        await asyncio.to_thread(_plain_tar, paths, usage_bytes) for _ in range(args.repeat)
    ]
    plain_hash = [_plain_hash(data) for _ in range(args.repeat)]
    return {
        "config": {"usage_records": args.records, "files": args.files,
                   "files_mib": args.total_mib, "repeat": args.repeat, "cpus": os.cpu_count(),
                   "api_workers": 1, "client": "httpx over loopback"},
        "bundle": {"bytes": len(data), "items": len(items), "usage_records": lines,
                   "usage_bytes": len(usage_bytes), "tree_size": verified.tree_size},
        "usage_insert_s": round(usage_s, 3),
        "open_s": round(open_s, 3),
        "upload_s": round(upload_s, 3),
        "export_s": _seconds(export),
        "verify_s": _seconds(verify),
        "baseline_plain_tar_s": _seconds(plain_tar),
        "baseline_sha256_s": _seconds(plain_hash),
    }  # fmt: skip


async def _rounds(
    http: httpx.AsyncClient, dispute: str, buyer: dict[str, str], jwks: Any, repeat: int
) -> tuple[list[float], list[float], bytes, Any]:
    """Fetch the bundle through the API and verify it offline, ``repeat`` times each."""
    export, verify = [], []
    data, verified = b"", None
    for _ in range(repeat):
        started = time.perf_counter()
        answer = await http.get(f"/v1/disputes/{dispute}/bundle", headers=buyer)
        export.append(time.perf_counter() - started)
        if answer.status_code != 200:
            raise RuntimeError(f"the bundle: {answer.status_code} {answer.text[:300]}")
        data = answer.content
        started = time.perf_counter()
        verified = await asyncio.to_thread(verify_bundle, data, jwks)
        verify.append(time.perf_counter() - started)
    return export, verify, data, verified


def _member(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        member = tar.extractfile(name)
        assert member is not None
        return member.read()


def _print(report: dict[str, Any], out: TextIO) -> None:
    bundle, export, verify = report["bundle"], report["export_s"], report["verify_s"]
    tar, digest = report["baseline_plain_tar_s"], report["baseline_sha256_s"]
    out.write(
        f"\nbundle: {bundle['items']} items, {bundle['bytes'] / MIB:.1f} MiB, usage"
        f" {bundle['usage_records']:,} records ({bundle['usage_bytes'] / MIB:.1f} MiB),"
        f" ledger tree of {bundle['tree_size']:,}\n"
        f"open (system evidence attached) {report['open_s']:.3f} s;"
        f" uploads {report['upload_s']:.2f} s\n"
        f"export  median {export['median']:.3f} s (best {export['best']:.3f}, worst"
        f" {export['worst']:.3f}); target ≤ {EXPORT_TARGET_S} s;"
        f" plain tar of the same files {tar['median']:.3f} s"
        f" (ratio {export['median'] / max(tar['median'], 1e-9):.1f}x)\n"
        f"verify  median {verify['median']:.3f} s (best {verify['best']:.3f}, worst"
        f" {verify['worst']:.3f}); target ≤ {VERIFY_TARGET_S} s;"
        f" SHA-256 of the bundle {digest['median']:.3f} s"
        f" (ratio {verify['median'] / max(digest['median'], 1e-9):.1f}x)\n"
    )
