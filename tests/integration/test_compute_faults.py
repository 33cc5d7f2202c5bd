"""A job runner killed with SIGKILL mid-job: the job's message comes back from the work queue
to the next runner, which runs the job again (attempt 2); the buyer is charged once, for the
run that finished, and the CPU reservation ends consistent (nothing left leased). The runners
are real `dataex serve runner` processes."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from typing import Any

import nats
import pytest

from exchange.platform.context import Platform
from exchange.platform.metering import Dimension
from exchange.platform.outbox import relay_batch
from exchange.platform.signing import KeyRing, load_master_key
from tests.integration.test_compute_runner import Jobs
from tests.kit.compute import grant_with_data, require_sandbox, runner
from tests.kit.settlement import kill, spawn

pytestmark = pytest.mark.faults


@pytest.fixture(autouse=True)
def _sandbox_available() -> None:
    require_sandbox()


SLOW = """
import csv, json, time
time.sleep(1.5)
counts = {}
with open('/data/inputs/sales.csv', newline='') as f:
    for row in csv.DictReader(f):
        counts[row['region']] = counts.get(row['region'], 0) + 1
rows = [[k, v] for k, v in sorted(counts.items())]
json.dump({'columns': ['region', 'count'], 'rows': rows}, open('/data/output/result.json', 'w'))
"""


async def _state(pool: Any, job_id: uuid.UUID) -> Any:
    return await pool.fetchrow("SELECT * FROM compute_jobs WHERE id = $1", job_id)


async def _until(pool: Any, job_id: uuid.UUID, states: set[str], seconds: float) -> Any:
    deadline = time.monotonic() + seconds
    while (row := await _state(pool, job_id))["state"] not in states:
        assert time.monotonic() < deadline, dict(row)
        await asyncio.sleep(0.05)
    return row


async def test_a_runner_killed_mid_job_leaves_it_rerun_once_and_charged_once(
    client, trade, settings, pool, clock
):
    cpu = Dimension("cpu_ms", unit_price_millifen=10, quota=1_000_000)
    grant_id = await grant_with_data(client, trade, pool, clock, settings, dimensions=[cpu])
    jobs = Jobs(client, trade, grant_id, runner(pool, clock, settings))
    sha = await jobs.approve(SLOW)
    job = await jobs.submit({"kind": "algorithm", "algorithm_sha256": sha})
    job_id = uuid.UUID(job["id"])
    connection = await nats.connect(settings.nats_url)
    try:
        platform = Platform(settings=settings, clock=clock, pool=pool, nats=connection,
                            keyring=KeyRing(load_master_key(settings.state_dir)))  # fmt: skip
        while await relay_batch(platform):
            pass
    finally:
        await connection.close()
    first = spawn("runner", settings)
    try:
        await _until(pool, job_id, {"running"}, 30)
        kill(first)  # SIGKILL mid-job: nothing written, nothing acked
    finally:
        kill(first)
    assert (await _state(pool, job_id))["state"] == "running"
    second = spawn("runner", settings)
    try:
        # The work queue hands the unacked message on after its ack wait (30 s).
        done = await _until(pool, job_id, {"succeeded", "failed_platform"}, 60)
    finally:
        kill(second, signal.SIGTERM)
    assert (done["state"], done["attempts"]) == ("succeeded", 2)
    records = await pool.fetch("SELECT units FROM usage_records WHERE grant_id = $1", grant_id)
    assert len(records) == 1  # charged once
    quota = await pool.fetchrow(
        "SELECT used_units, leased_units FROM grant_quotas WHERE grant_id = $1"
        " AND dimension = 'cpu_ms'",
        grant_id,
    )
    assert quota["leased_units"] == 0 and quota["used_units"] == done["cpu_ms"]
    assert done["receipt"] is not None
