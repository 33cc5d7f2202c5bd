"""`dataex bench jobs`: what a compute job costs end to end.

- **sandbox start overhead**: `benchmarks.sandbox_start.measure_start_overhead`, a trivial
  program with and without the sandbox, interleaved;
- **submit → result**: a trivial approved algorithm submitted one at a time through
  `JobService.submit` (the transaction the API runs: budget, outbox event, work-queue row),
  relayed by the outbox relay to the JetStream work queue, taken by a runner
  (`JobRunner.serve`: staging, sandbox, output checks, outcome, signed receipt), and seen final
  in the database; median and p95 (target p95 ≤ 1 s);
- **jobs per second** with one and with two runners, each taking one job at a time, over a
  burst of jobs submitted at once.

The grant and its terms are synthetic (the compute room's hooks, filled here instead of by the
delivery and listing rooms), so no HTTP, listing, trade or file upload is measured: the API's
own request handling adds its usual few milliseconds. Runners run in this process (one event
loop; the sandbox runs in threads), which is how one `dataex serve runner` with two slots
behaves; separate processes on separate machines share the same queue the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import statistics
import time
import uuid
from pathlib import Path
from typing import Any, TextIO

from benchmarks.sandbox_start import measure_start_overhead
from exchange.compute.runner import JobRunner
from exchange.compute.schemas import JobIn
from exchange.compute.service import (
    ComputeHooks,
    ComputeTerms,
    FieldSpec,
    GrantView,
    JobService,
    SandboxTerms,
)
from exchange.platform.audit import Actor
from exchange.platform.auth import Principal
from exchange.platform.bus import connect_nats
from exchange.platform.clock import SystemClock
from exchange.platform.context import Platform
from exchange.platform.db import Executor, create_pool
from exchange.platform.outbox import relay_loop
from exchange.platform.settings import Settings
from exchange.platform.signing import KeyRing, load_master_key
from exchange.runtime import prepare

TRIVIAL = (
    "import json\n"
    "json.dump({'columns': ['total', 'count'], 'rows': [['all', 30]]},"
    " open('/data/output/result.json', 'w'))\n"
)
DATA = ("region,amount\n" + "".join(f"r{i % 3},{i}\n" for i in range(30))).encode()
FINAL_STATES = (
    "succeeded", "failed_algorithm", "failed_platform", "timed_out", "limit_exceeded",
    "output_rejected", "cancelled",
)  # fmt: skip


class _Bench:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.grant = GrantView(
            id=uuid.uuid4(), trade_id=uuid.uuid4(), mode="sandbox", state="active",
            buyer_org_id=uuid.uuid4(), seller_org_id=uuid.uuid4(), product_id=uuid.uuid4(),
            product_code="BENCH", revision=1, revision_digest="sha256:" + "0" * 64,
            plan_id="bench",
        )  # fmt: skip
        terms = ComputeTerms(
            sandbox=SandboxTerms(k=1, cpu_seconds=5, wall_seconds=10),
            fields=(FieldSpec("region"), FieldSpec("amount")), files=("data.csv",),
        )  # fmt: skip

        async def grant(_: uuid.UUID) -> GrantView:
            return self.grant

        async def lookup(_c: Executor, _p: uuid.UUID, _r: int, _plan: str) -> ComputeTerms:
            return terms

        self.hooks = ComputeHooks(grant=grant, terms=lookup)
        self.service = JobService(platform.pool, platform.clock, platform.settings, self.hooks,
                                  platform.keyring)  # fmt: skip
        self.principal = Principal(
            org_id=self.grant.buyer_org_id, org_name="bench", token_id=uuid.uuid4(),
            roles=frozenset({"buyer"}), is_operator=False,
        )  # fmt: skip
        self.sha = hashlib.sha256(TRIVIAL.encode()).hexdigest()

    async def approve(self) -> None:
        now = self.platform.clock.now()
        await self.platform.pool.execute(
            "INSERT INTO compute_algorithms (grant_id, sha256, source, params_schema, state,"
            " submitted_by, submitted_at, decided_by, decided_at)"
            " VALUES ($1, $2, $3, '{}', 'approved', 'bench', $4, 'bench', $4)",
            self.grant.id, self.sha, TRIVIAL.encode(), now,
        )  # fmt: skip

    def runner(self, name: str) -> JobRunner:
        async def stage(_p: uuid.UUID, _r: int, folder: Path) -> dict[str, Path]:
            path = folder / "data.csv"
            await asyncio.to_thread(path.write_bytes, DATA)
            path.chmod(0o644)
            return {"data.csv": path}

        p = self.platform
        return JobRunner(p.pool, p.clock, p.settings, self.hooks, stage, p.keyring, name=name)

    async def submit(self) -> uuid.UUID:
        job, _ = await self.service.submit(
            Actor(label="bench"), self.principal, self.grant.id,
            JobIn(kind="algorithm", algorithm_sha256=self.sha), str(uuid.uuid4()),
        )  # fmt: skip
        return job.id

    async def final(self, ids: list[uuid.UUID], within: float) -> list[str]:
        deadline = time.monotonic() + within
        while True:
            rows = await self.platform.pool.fetch(
                "SELECT state FROM compute_jobs WHERE id = ANY($1) AND state = ANY($2)",
                ids, list(FINAL_STATES),
            )  # fmt: skip
            if len(rows) == len(ids):
                return [r["state"] for r in rows]
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(rows)} of {len(ids)} jobs final after {within} s")
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def _runners(bench: _Bench, count: int, tag: str) -> Any:
    stop = asyncio.Event()
    nats = bench.platform.nats
    tasks = [
        asyncio.create_task(bench.runner(f"bench-{tag}-{i}").serve(nats, stop, 1))
        for i in range(count)
    ]
    try:
        await asyncio.sleep(0.2)  # subscribed
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _latency(bench: _Bench, jobs: int) -> dict[str, Any]:
    seconds: list[float] = []
    async with _runners(bench, 1, "latency"):
        for _ in range(jobs):
            started = time.perf_counter()
            job_id = await bench.submit()
            [state] = await bench.final([job_id], 30)
            if state != "succeeded":
                raise RuntimeError(f"the trivial job ended {state}")
            seconds.append(time.perf_counter() - started)
    return {
        "jobs": jobs,
        "median_ms": round(statistics.median(seconds) * 1000, 1),
        "p95_ms": round(statistics.quantiles(seconds, n=20, method="inclusive")[-1] * 1000, 1),
        "target_p95_ms": 1000,
    }


async def _throughput(bench: _Bench, runners: int, jobs: int) -> float:
    async with _runners(bench, runners, f"burst{runners}"):
        started = time.perf_counter()
        ids = await asyncio.gather(*(bench.submit() for _ in range(jobs)))
        states = await bench.final(list(ids), 120)
        took = time.perf_counter() - started
    if any(s != "succeeded" for s in states):
        raise RuntimeError(f"burst jobs ended {sorted(set(states))}")
    return round(jobs / took, 2)


def _write(folder: Path, result: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "jobs.json").write_text(json.dumps(result, indent=2) + "\n")


async def bench_jobs(live: Settings, args: Any, out: TextIO) -> int:
    out.write(f"sandbox start: {args.starts} trivial runs with and without the sandbox …\n")
    start = await asyncio.to_thread(measure_start_overhead, args.starts)
    assert live.database_url and live.nats_url
    await prepare(live, bootstrap="never")  # migrations, streams, the signing key
    pool = await create_pool(live.database_url, max_size=8)
    nats = await connect_nats(live.nats_url, name="dataex-bench-jobs")
    stop = asyncio.Event()
    try:
        platform = Platform(settings=live, clock=SystemClock(), pool=pool, nats=nats,
                            keyring=KeyRing(load_master_key(live.state_dir)))  # fmt: skip
        relay = asyncio.create_task(relay_loop(platform, stop))
        bench = _Bench(platform)
        await bench.approve()
        out.write(f"submit → result: {args.jobs} trivial jobs, one at a time …\n")
        latency = await _latency(bench, args.jobs)
        rates = {}
        for runners in (1, 2):
            out.write(f"throughput: {args.burst} jobs at once, {runners} runner(s) …\n")
            rates[str(runners)] = await _throughput(bench, runners, args.burst)
        stop.set()
        await relay
    finally:
        stop.set()
        await nats.close()
        await pool.close()
    result = {"sandbox_start": start, "submit_to_result": latency, "jobs_per_second": rates}
    await asyncio.to_thread(_write, Path(args.out), result)
    out.write(
        f"\nsandbox start   overhead median {start['overhead_median_ms']} ms,"
        f" p95 {start['overhead_p95_ms']} ms (sandbox {start['sandbox_median_ms']} ms,"
        f" plain {start['plain_median_ms']} ms)\n"
        f"submit → result median {latency['median_ms']} ms, p95 {latency['p95_ms']} ms"
        f" (target ≤ 1000)\n"
        f"jobs per second 1 runner {rates['1']}, 2 runners {rates['2']}\n"
        f"written: {Path(args.out) / 'jobs.json'}\n"
    )
    return 0
