"""Compute jobs metered like gateway usage: a quota lease reserved at submission, one usage
record when the job ends, the lease closed — so delivery's billing periods post a job's CPU
through `settlement.metered` exactly as they post API calls and downloads.

The compute room calls these through hooks (`exchange.wiring`), in its own transactions:

- `reserve`, in the submission's transaction: for the job's CPU limit (``cpu_ms`` units and,
  under a spend cap, their cost), exact leases of the grant's quotas whose TTL covers the wall
  limit, or `QuotaExhausted` (nothing is queued then). A plan that does not meter ``cpu_ms``
  reserves only what its spend cap needs (nothing, for a plan without one).
- `settle`, in the transaction that writes the job's end: one usage record (id derived from the
  job's, so it is written once whatever retries) with the CPU actually used (0 on a platform
  failure), then the leases close: *used* is counted from that record, the rest returns.

A runner killed mid-job never settles: its leases expire and the reaper closes them counting
only records written under them (none), so the buyer pays nothing for that attempt; the run
that finishes settles once. A record whose leases were closed first (expired while the job
waited, or closed by a billing period) is written without them: billed all the same.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Final

import msgspec

from exchange.delivery.quota import _close, holder_name, needs_for
from exchange.delivery.service import _dimensions
from exchange.delivery.tokens import QuotaExhausted
from exchange.delivery.usage import UsageRecord, write
from exchange.platform.db import Connection
from exchange.platform.metering import cost_millifen

CPU_DIMENSION: Final = "cpu_ms"
_USAGE_NAMESPACE: Final = uuid.UUID("6d0c7a52-8a5e-4b8f-9d55-3f0b2f7f0c11")


async def _terms(conn: Connection, grant_id: uuid.UUID) -> Any:
    return await conn.fetchrow(
        "SELECT dimensions, spend_cap_fen, state FROM grants WHERE id = $1 FOR SHARE", grant_id
    )


async def reserve(
    conn: Connection, grant_id: uuid.UUID, cpu_ms_limit: int, ttl_seconds: float
) -> list[uuid.UUID]:
    """Lease the job's CPU limit from the grant's quotas (module docstring); the lease ids."""
    grant = await _terms(conn, grant_id)
    dimensions = _dimensions(grant["dimensions"])
    by_name = {d.name: d for d in dimensions}
    units = {CPU_DIMENSION: cpu_ms_limit}
    needs = needs_for(dimensions, grant["spend_cap_fen"], units, cost_millifen(units, by_name))
    leases: list[uuid.UUID] = []
    for dimension, n in sorted(needs.items()):
        free = await conn.fetchval(
            "SELECT limit_units - used_units - leased_units FROM grant_quotas"
            " WHERE grant_id = $1 AND dimension = $2 FOR UPDATE",
            grant_id, dimension,
        )  # fmt: skip
        if free is None or free < n:
            raise QuotaExhausted(
                f"the grant's {dimension} quota does not cover this job's limit"
                f" ({n} needed, {free or 0} left)",
                extensions={"dimension": dimension, "needed": n, "left": free or 0},
            )
        lease_id = uuid.uuid4()
        await conn.execute(
            "UPDATE grant_quotas SET leased_units = leased_units + $3"
            " WHERE grant_id = $1 AND dimension = $2",
            grant_id, dimension, n,
        )  # fmt: skip
        await conn.execute(
            "INSERT INTO quota_leases (id, grant_id, dimension, holder, units, leased_at,"
            " expires_at) VALUES ($1, $2, $3, $4, $5, clock_timestamp(),"
            " clock_timestamp() + make_interval(secs => $6))",
            lease_id, grant_id, dimension, f"job:{holder_name()}", n, ttl_seconds,
        )  # fmt: skip
        leases.append(lease_id)
    return leases


async def settle(
    conn: Connection, grant_id: uuid.UUID, job_id: uuid.UUID, leases: list[uuid.UUID],
    cpu_ms: int, at: datetime,
) -> int:  # fmt: skip
    """Record what the job used and close its leases; returns the cost in milli-fen."""
    grant = await _terms(conn, grant_id)
    by_name = {d.name: d for d in _dimensions(grant["dimensions"])}
    units = {CPU_DIMENSION: cpu_ms}
    cost = cost_millifen(units, by_name)
    if cpu_ms > 0 or cost > 0:
        record = UsageRecord(
            id=uuid.uuid5(_USAGE_NAMESPACE, str(job_id)), grant_id=grant_id, served_at=at,
            units=units, leases=leases, cost_millifen=cost,
            detail={"job_id": str(job_id), "kind": "compute_job"},
        )  # fmt: skip
        if not await write(conn, [record]):
            # Its leases were closed first (they expired while it waited in the queue, or a
            # billing period closed them): it is billed all the same, outside any lease.
            await write(conn, [msgspec.structs.replace(record, leases=[])])
    for lease_id in sorted(leases):
        await _close(conn, lease_id, None)
    return cost
