"""A gateway process killed with SIGKILL during a run of 10,000 calls across two processes.

How "no served call unrecorded" is checked: the client keeps the ``Dataex-Usage-Id`` of every
2xx it received, and each must be a row of ``usage_records`` (the gateway commits the record
before the first byte of the answer). "Nothing doubled": usage ids are unique among the
answers, the records and the calls the upstream saw, and every record is a call the upstream
answered. "Quotas hold": the records never exceed the limit, and once the dead process's leases
have expired and the reaper has closed them, ``used`` equals the records and nothing is leased.
"""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest

from exchange.delivery.quota import reap_expired
from exchange.platform.metering import Dimension
from tests.kit.gateway import api_grant, bearer, gateway_processes, upstream
from tests.kit.settlement import kill

pytestmark = pytest.mark.faults

CALLS = 10_000
QUOTA = 8_000
CLIENTS = 32
KILL_AFTER = 2_000


async def test_a_gateway_killed_mid_run_leaves_no_answer_unrecorded_nothing_doubled_and_quotas_whole(
    settings, pool, tmp_path
):
    async with upstream() as seller:
        grant = await api_grant(pool, settings, seller.url,
                                dimensions=[Dimension("requests", quota=QUOTA)])  # fmt: skip
        token = await grant.token()
        served: list[str] = []
        outcomes: dict[str, int] = {}
        attempts = 0
        async with (
            gateway_processes(settings, 2, tmp_path / "gateways.log") as gateways,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CLIENTS)) as client,
        ):
            victim = gateways[0][1]
            alive = [url for url, _ in gateways]

            async def caller(n: int) -> None:
                nonlocal attempts
                while attempts < CALLS:
                    attempts += 1
                    url = alive[(n + attempts) % len(alive)] + grant.path(f"c{n}")
                    try:
                        async with client.get(url, headers=bearer(token)) as answer:
                            await answer.read()
                            if answer.status == 200:
                                served.append(answer.headers["dataex-usage-id"])
                                outcome = "served"
                            else:
                                outcome = (await answer.json())["code"]
                    except aiohttp.ClientError:
                        outcome = "connection_lost"  # the killed process's calls
                    outcomes[outcome] = outcomes.get(outcome, 0) + 1
                    if outcome == "quota_leased_elsewhere":
                        await asyncio.sleep(0.01)

            async def assassin() -> None:
                while len(served) < KILL_AFTER:  # noqa: ASYNC110 (waiting on the callers)
                    await asyncio.sleep(0.005)
                kill(victim)  # SIGKILL: leases held, flushes in flight, answers half sent
                alive.remove(gateways[0][0])

            started = time.monotonic()
            await asyncio.gather(assassin(), *(caller(n) for n in range(CLIENTS)))
            seconds = time.monotonic() - started
        print(f"{attempts} calls in {seconds:.1f} s: {outcomes}")
        upstream_ids = [seen.headers["dataex-usage-id"] for seen in seller.seen]

    assert victim.returncode == -signal.SIGKILL
    assert outcomes.get("served", 0) > KILL_AFTER
    records = {r["id"].hex: r for r in await pool.fetch(
        "SELECT id, units, leases FROM usage_records WHERE grant_id = $1", grant.id)}  # fmt: skip
    served_hex = [s.replace("-", "") for s in served]
    assert len(set(served_hex)) == len(served_hex), "an answer's usage id repeated"
    assert set(served_hex) <= set(records), "a served answer has no usage record"
    assert len(set(upstream_ids)) == len(upstream_ids), "the upstream saw a usage id twice"
    assert set(records) <= {u.replace("-", "") for u in upstream_ids}
    assert all(r["units"]["requests"] == 1 for r in records.values())
    assert len(records) <= QUOTA

    # The dead process's leases run out their TTL (moved to now rather than waited for) and the
    # reaper closes them, counting their units from the records written under them.
    open_leases = await pool.fetchval("SELECT count(*) FROM quota_leases WHERE closed_at IS NULL")
    assert open_leases >= 1  # the survivor returned its own when it stopped
    await pool.execute("UPDATE quota_leases SET expires_at = now() WHERE closed_at IS NULL")
    assert await reap_expired(pool) == open_leases
    quota = await pool.fetchrow("SELECT * FROM grant_quotas WHERE grant_id = $1", grant.id)
    assert (quota["used_units"], quota["leased_units"]) == (len(records), 0)
    by_lease = await pool.fetchval(
        "SELECT coalesce(sum(used), 0) FROM quota_leases WHERE grant_id = $1", grant.id
    )
    assert by_lease == len(records)
