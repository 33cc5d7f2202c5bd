"""Jobs run for real, through the API: approved algorithms in the bubblewrap sandbox over a
grant's stored files, DP queries, the output checks, and the hostile suite. A runner runs in
this process (`tests.kit.compute.runner`), taking each job as a queue message would hand it.

These need PostgreSQL and NATS (the integration fixtures) and bubblewrap: without bubblewrap
they skip with one line saying so, and under ``DATAEX_REQUIRE_SANDBOX=1`` they fail instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

from exchange.compute import receipts
from exchange.delivery.quota import reap_expired
from exchange.platform.context import Platform
from exchange.platform.metering import Dimension
from exchange.platform.outbox import relay_batch
from exchange.platform.signing import KeyRing, load_master_key
from tests.kit.api import bearer
from tests.kit.compute import SANDBOX_PLAN, grant_with_data, require_sandbox, runner, sales_csv


@pytest.fixture(autouse=True)
def _sandbox_available() -> None:
    require_sandbox()


AGGREGATE = """
import csv, json
counts = {}
with open('/data/inputs/sales.csv', newline='') as f:
    for row in csv.DictReader(f):
        counts[row['region']] = counts.get(row['region'], 0) + 1
rows = [[k, v] for k, v in sorted(counts.items())]
json.dump({'columns': ['region', 'count'], 'rows': rows}, open('/data/output/result.json', 'w'))
"""


def report(expression: str) -> str:
    """A program that releases one computed value (the outcome of a probe) as an aggregate."""
    return f"""
import json, os
def probe():
{expression}
try:
    outcome = str(probe())
except BaseException as error:
    outcome = type(error).__name__
json.dump({{'columns': ['outcome', 'count'], 'rows': [[outcome, 10]]}},
          open('/data/output/result.json', 'w'))
"""


HOSTILE_OUTCOMES = {
    "network": (
        "    import socket\n    s = socket.socket()\n    s.connect(('127.0.0.1', 5432))\n"
        "    return 'connected'",
        "PermissionError",
    ),
    "shadow": ("    return open('/etc/shadow').read()[:5]", "FileNotFoundError"),
    "init_environ": (
        "    text = open('/proc/1/environ').read()\n"
        "    return 'DATAEX' in text or '/root' in text or 'PATH=/work' in text",
        "False",
    ),
    "state_folder": ("    return os.listdir('/work') or os.listdir('/root')", "FileNotFoundError"),
    "other_inputs": (
        "    return sorted(os.listdir('/data/inputs'))",
        "['params.json', 'sales.csv']",
    ),
}


class Jobs:
    """The buyer and seller of one sandbox grant, and a runner."""

    def __init__(self, client: Any, trade: dict[str, Any], grant_id: uuid.UUID, run: Any):
        self.client, self.trade, self.grant_id, self.runner = client, trade, grant_id, run

    async def approve(self, source: str) -> str:
        buyer, seller = bearer(self.trade["buyer"]), bearer(self.trade["seller"])
        base = f"/v1/grants/{self.grant_id}/algorithms"
        up = await self.client.post(base, json={"source": source}, headers=buyer)
        assert up.status_code == 201, up.text
        sha = hashlib.sha256(source.encode()).hexdigest()
        decided = await self.client.post(
            f"{base}/{sha}/decision", json={"decision": "approve"}, headers=seller
        )
        assert decided.status_code == 200, decided.text
        return sha

    async def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        made = await self.client.post(
            f"/v1/grants/{self.grant_id}/jobs", json=body,
            headers={**bearer(self.trade["buyer"]), "Idempotency-Key": str(uuid.uuid4())},
        )  # fmt: skip
        assert made.status_code == 201, made.text
        job: dict[str, Any] = made.json()
        return job

    async def run(self, source: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Approve, submit, run and read the job as its buyer."""
        sha = await self.approve(source)
        job = await self.submit({"kind": "algorithm", "algorithm_sha256": sha,
                                 "params": params or {}})  # fmt: skip
        await self.runner.handle(uuid.UUID(job["id"]))
        return await self.read(job["id"])

    async def read(self, job_id: str, token: str | None = None) -> dict[str, Any]:
        answer = await self.client.get(
            f"/v1/jobs/{job_id}", headers=bearer(token or self.trade["buyer"])
        )
        assert answer.status_code == 200, answer.text
        job: dict[str, Any] = answer.json()
        return job


@pytest.fixture
async def jobs(client, trade, settings, pool, clock) -> Jobs:
    grant_id = await grant_with_data(client, trade, pool, clock, settings)
    return Jobs(client, trade, grant_id, runner(pool, clock, settings))


async def test_an_approved_aggregate_succeeds_and_only_its_buyer_reads_the_values(
    jobs, admin_token
):
    job = await jobs.run(AGGREGATE)
    assert job["state"] == "succeeded", job
    assert job["result"]["rows"] == [["east", 20], ["north", 20], ["south", 20]]
    assert job["result_sha256"] and job["cpu_ms"] is not None and job["attempts"] == 1
    for token in (jobs.trade["seller"], admin_token):
        seen = await jobs.read(job["id"], token)
        assert seen["result"] is None and seen["state"] == "succeeded"
    # A redelivered message for a finished job is ignored.
    assert await jobs.runner.handle(uuid.UUID(job["id"])) is None


@pytest.mark.parametrize("name", sorted(HOSTILE_OUTCOMES))
async def test_the_sandbox_hides_the_host_network_secrets_and_other_grants(jobs, name):
    probe, expected = HOSTILE_OUTCOMES[name]
    job = await jobs.run(report(probe))
    assert job["state"] == "succeeded", job
    outcome = job["result"]["rows"][0][0]
    assert outcome == expected  # /proc/1 is the sandbox's own init, its environment cleared


@pytest.mark.parametrize(
    ("program", "reason"),
    [
        ("copy_inputs.py", "row_level"),
        ("group_by_identifier.py", "identifier"),
        ("small_group.py", "k"),
        ("copy_file.py", "schema"),
    ],
)
async def test_outputs_that_are_not_aggregates_are_refused(jobs, program, reason):
    source = (Path(__file__).parents[1] / "sandbox" / "algorithms" / program).read_text()
    source = (
        source.replace("customer_id", "id_number")  # this product's identifier
        .replace('["region", "month", "amount", "age"]', '["region", "amount"]')
        .replace('row["age"]', 'row["amount"]')  # small groups: region and amount
    )
    job = await jobs.run(source)
    assert (job["state"], job["rejection_reason"]) == ("output_rejected", reason), job
    assert job["result"] is None


async def test_an_infinite_loop_times_out_within_the_wall_limit_and_the_next_job_runs(jobs):
    started = time.monotonic()
    job = await jobs.run("while True:\n    pass\n")
    took = time.monotonic() - started
    assert job["state"] == "timed_out", job
    wall, cpu = SANDBOX_PLAN["sandbox"]["wall_seconds"], SANDBOX_PLAN["sandbox"]["cpu_seconds"]
    assert took < wall + 3  # staging, the API and the database around the job's own wall+1 s
    assert job["cpu_ms"] <= (cpu + 1) * 1000
    assert (await jobs.run(AGGREGATE))["state"] == "succeeded"


@pytest.mark.parametrize(
    ("source", "limit"),
    [
        ("block = bytearray(2 * 2**30)\nblock[::4096] = b'x' * len(block[::4096])\n", "memory"),
        ("import os\nwhile True:\n    os.fork()\n", "pids"),
        (
            "chunk = b'x' * 2**20\nwith open('/data/output/result.json', 'wb') as f:\n"
            "    for _ in range(100):\n        f.write(chunk)\n",
            "output",
        ),
    ],
    ids=["2GiB", "fork_bomb", "100MiB"],
)
async def test_limits_end_the_job_and_the_next_one_runs_normally(jobs, source, limit):
    job = await jobs.run(source)
    assert (job["state"], job["limit_kind"]) == ("limit_exceeded", limit), job
    assert (await jobs.run(AGGREGATE))["state"] == "succeeded"


async def test_a_dp_count_by_region_releases_noisy_counts_and_spends_epsilon(jobs):
    query = {"aggregate": "count", "group_by": ["region"], "epsilon": 0.5}
    job = await jobs.submit({"kind": "query", "query": query})
    assert await jobs.runner.handle(uuid.UUID(job["id"])) == "succeeded"
    done = await jobs.read(job["id"])
    assert done["result"]["columns"] == ["region", "count"]
    assert sorted(row[0] for row in done["result"]["rows"]) == ["east", "north", "south"]
    assert done["epsilon"] == 0.5 and done["result"]["epsilon"] == 0.5
    grouped_by_id = {"aggregate": "count", "group_by": ["id_number"], "epsilon": 0.1}
    refused = await jobs.client.post(
        f"/v1/grants/{jobs.grant_id}/jobs", json={"kind": "query", "query": grouped_by_id},
        headers={**bearer(jobs.trade["buyer"]), "Idempotency-Key": "id"},
    )  # fmt: skip
    assert refused.status_code == 422, refused.text


async def test_a_job_goes_through_the_work_queue_to_a_runner_and_a_lost_runners_job_is_rerun(
    jobs, settings, pool, clock
):
    """Through the outbox relay and the JetStream work queue to `JobRunner.serve`; then a job
    left running by a runner that died is taken again, once, and never charged twice."""
    sha = await jobs.approve(AGGREGATE)
    job = await jobs.submit({"kind": "algorithm", "algorithm_sha256": sha})
    client = await nats.connect(settings.nats_url)
    try:
        platform = Platform(settings=settings, clock=clock, pool=pool, nats=client,
                            keyring=KeyRing(load_master_key(settings.state_dir)))  # fmt: skip
        while await relay_batch(platform):
            pass
        stop = asyncio.Event()
        serving = asyncio.create_task(jobs.runner.serve(client, stop, 2))
        deadline = time.monotonic() + 20
        while (await jobs.read(job["id"]))["state"] != "succeeded":
            assert time.monotonic() < deadline, await jobs.read(job["id"])
            await asyncio.sleep(0.1)
        stop.set()
        await asyncio.wait_for(serving, 5)
    finally:
        await client.close()

    # A runner died mid-job: the row says running, by a runner that is gone.
    lost = await jobs.submit({"kind": "algorithm", "algorithm_sha256": sha})
    await pool.execute(
        "UPDATE compute_jobs SET state = 'running', attempts = 1, runner = 'dead' WHERE id = $1",
        uuid.UUID(lost["id"]),
    )
    assert await jobs.runner.handle(uuid.UUID(lost["id"])) == "succeeded"
    again = await jobs.read(lost["id"])
    assert (again["state"], again["attempts"]) == ("succeeded", 2)
    # At the last attempt, it fails on the platform instead (nothing charged).
    last = await jobs.submit({"kind": "algorithm", "algorithm_sha256": sha})
    await pool.execute(
        "UPDATE compute_jobs SET state = 'running', attempts = 2, runner = 'dead' WHERE id = $1",
        uuid.UUID(last["id"]),
    )
    assert await jobs.runner.handle(uuid.UUID(last["id"])) is None
    failed = await jobs.read(last["id"])
    assert (failed["state"], failed["rejection_reason"], failed["cpu_ms"]) == (
        "failed_platform", "runner_lost", 0,
    )  # fmt: skip


CPU = Dimension("cpu_ms", unit_price_millifen=10, quota=1_000_000)


@pytest.fixture
async def metered(client, trade, settings, pool, clock) -> Jobs:
    grant_id = await grant_with_data(client, trade, pool, clock, settings, dimensions=[CPU])
    return Jobs(client, trade, grant_id, runner(pool, clock, settings))


async def _quota(pool: Any, grant_id: uuid.UUID) -> tuple[int, int]:
    row = await pool.fetchrow(
        "SELECT used_units, leased_units FROM grant_quotas WHERE grant_id = $1"
        " AND dimension = 'cpu_ms'",
        grant_id,
    )
    return row["used_units"], row["leased_units"]


async def test_a_job_reserves_its_cpu_limit_and_is_charged_what_it_used_once(metered, pool):
    limit_ms = SANDBOX_PLAN["sandbox"]["cpu_seconds"] * 1000
    sha = await metered.approve("while True:\n    pass\n")
    job = await metered.submit({"kind": "algorithm", "algorithm_sha256": sha})
    assert await _quota(pool, metered.grant_id) == (0, limit_ms)  # reserved at submission
    await metered.runner.handle(uuid.UUID(job["id"]))
    done = await metered.read(job["id"])
    assert done["state"] == "timed_out"
    used, leased = await _quota(pool, metered.grant_id)
    assert leased == 0 and 0 < used <= limit_ms  # only the limit's CPU is charged
    records = await pool.fetch(
        "SELECT units, cost_millifen FROM usage_records WHERE grant_id = $1", metered.grant_id
    )
    assert len(records) == 1
    units = records[0]["units"]
    units = msgspec.json.decode(units) if isinstance(units, str) else units
    assert units == {"cpu_ms": used} and records[0]["cost_millifen"] == used * 10
    # Redelivered: nothing runs or is charged again.
    assert await metered.runner.handle(uuid.UUID(job["id"])) is None
    assert await _quota(pool, metered.grant_id) == (used, 0)


async def test_a_platform_failure_charges_nothing_and_returns_the_reservation(metered, pool):
    sha = await metered.approve(AGGREGATE)
    job = await metered.submit({"kind": "algorithm", "algorithm_sha256": sha})
    await pool.execute(
        "UPDATE compute_jobs SET state = 'running', attempts = 2, runner = 'dead' WHERE id = $1",
        uuid.UUID(job["id"]),
    )
    assert await metered.runner.handle(uuid.UUID(job["id"])) is None
    assert (await metered.read(job["id"]))["state"] == "failed_platform"
    assert await _quota(pool, metered.grant_id) == (0, 0)
    assert await pool.fetchval("SELECT count(*) FROM usage_records") == 0


async def test_a_job_receipt_verifies_offline_and_fails_after_any_changed_byte(jobs, client):
    job = await jobs.run(AGGREGATE)
    answer = await client.get(f"/v1/jobs/{job['id']}/receipt", headers=bearer(jobs.trade["buyer"]))
    assert answer.status_code == 200, answer.text
    data = answer.content
    keys = (await client.get("/.well-known/jwks.json")).json()
    receipt = receipts.verify(data, keys)
    assert receipt["job_id"] == job["id"] and receipt["state"] == "succeeded"
    assert receipt["algorithm_sha256"] == hashlib.sha256(AGGREGATE.encode()).hexdigest()
    assert receipt["inputs"] == {"sales.csv": hashlib.sha256(sales_csv()).hexdigest()}
    assert receipt["output_sha256"] == job["result_sha256"] and receipt["k"] == 10
    assert receipt["limits"]["cpu_seconds"] == SANDBOX_PLAN["sandbox"]["cpu_seconds"]
    for index in range(len(data)):
        for flip in (0x01, 0x20):
            changed = bytearray(data)
            changed[index] ^= flip
            with pytest.raises(receipts.ReceiptInvalid):
                receipts.verify(bytes(changed), keys)
    # The seller may read it too.
    seen = await client.get(f"/v1/jobs/{job['id']}/receipt", headers=bearer(jobs.trade["seller"]))
    assert seen.content == data


async def test_a_job_whose_lease_expired_while_queued_is_billed_all_the_same(metered, pool):
    sha = await metered.approve(AGGREGATE)
    job = await metered.submit({"kind": "algorithm", "algorithm_sha256": sha})
    await pool.execute("UPDATE quota_leases SET expires_at = now() - interval '1 second'")
    assert await reap_expired(pool) == 1  # the reaper returns the reservation, used 0
    assert await _quota(pool, metered.grant_id) == (0, 0)
    await metered.runner.handle(uuid.UUID(job["id"]))
    done = await metered.read(job["id"])
    assert done["state"] == "succeeded"
    records = await pool.fetch(
        "SELECT leases, cost_millifen FROM usage_records WHERE grant_id = $1", metered.grant_id
    )
    assert [(list(r["leases"]), r["cost_millifen"]) for r in records] == [([], done["cpu_ms"] * 10)]
