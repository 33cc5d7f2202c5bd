"""Exact quotas across gateway processes: leases of units from PostgreSQL, spent in memory.

A process takes a *lease* — a block of units of one grant's dimension — in one transaction that
raises ``grant_quotas.leased_units``; the database refuses ``used + leased > limit``, so the
units out on leases plus those already used never exceed the quota, whatever the processes do.
The process spends a lease in memory (no database work per request) and writes a usage record
naming the lease for every request it serves (`exchange.delivery.usage`). A lease is closed by
its process when it is done with it, or by the reaper once it has expired (a crashed process):
either way the units *used* are counted from the usage records written under it — never taken
from the process's word — and the rest go back to the quota.

Over-serving is impossible: a request is served only after its usage record is committed, and
that commit refuses a record whose lease is closed or expired. Under-serving is bounded: when
the free units run out while another process still holds some, a caller gets 429
``quota_leased_elsewhere`` (retry) rather than ``quota_exhausted``; held units come back when
their holder goes idle (`IDLE_RETURN_SECONDS`) or, if it died, when the lease expires
(`LEASE_TTL_SECONDS`). Blocks shrink as the quota runs low (an eighth of what is free, at
least what the request needs), so at the end each process holds only a few units. A process
leases its next block when a quarter of the current one is left (`REFILL_BELOW`), so it holds
at most that quarter beyond one block.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg

from exchange.delivery.tokens import STATE_REFUSALS, QuotaBusy, QuotaExhausted
from exchange.platform.db import Connection
from exchange.platform.metering import SPEND, Dimension

LEASE_TTL_SECONDS: Final = 60.0
# A lease is not used for new requests in its last USE_MARGIN seconds, so a request that took a
# unit (and may wait on the upstream up to the gateway's timeout) records before expiry.
USE_MARGIN_SECONDS: Final = 20.0
IDLE_RETURN_SECONDS: Final = 0.5
# A lease with less than this share of its block left gets its successor in the background, so
# a request rarely waits for a lease transaction (each dimension of a call would, once a block).
REFILL_BELOW: Final = 0.25
MAX_BLOCK_REQUESTS: Final = 64  # a block is at most this many times what one request needs

# Called in the closing transaction when a dimension's quota is used up (used = limit):
# the grant service turns it into ``exhausted`` (or a spend-cap suspension).
ExhaustedHook = Callable[[Connection, uuid.UUID, str], Awaitable[None]]


def needs_for(
    dimensions: Sequence[Dimension],
    spend_cap_fen: int | None,
    units: Mapping[str, int],
    cost: int,
) -> dict[str, int]:
    """The units one request takes from the grant's quotas: its dimensions that have a quota,
    and its cost from the spend cap (metered plans). Dimensions without a quota are counted
    in the usage record only: they never touch the database on the way."""
    limited = {d.name for d in dimensions if d.quota is not None}
    needs = {name: n for name, n in units.items() if name in limited and n > 0}
    if spend_cap_fen is not None and cost > 0:
        needs[SPEND] = cost
    return needs


def holder_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class _Lease:
    id: uuid.UUID
    grant_id: uuid.UUID
    dimension: str
    units: int
    expires_at: float  # monotonic deadline for new use
    remaining: int
    in_flight: int = 0
    last_used: float = field(default_factory=time.monotonic)
    retiring: bool = False


async def _close(conn: Connection, lease_id: uuid.UUID, on_exhausted: ExhaustedHook | None) -> None:
    """Close one lease in the caller's transaction: used = what its records say.

    Locks in the order every delivery transaction takes them — the grant, its leases, its
    quotas — so closing, leasing and billing never deadlock."""
    await conn.execute(
        "SELECT 1 FROM grants WHERE id = (SELECT grant_id FROM quota_leases WHERE id = $1)"
        " FOR UPDATE",
        lease_id,
    )
    row = await conn.fetchrow(
        "SELECT grant_id, dimension, units FROM quota_leases"
        " WHERE id = $1 AND closed_at IS NULL FOR UPDATE",
        lease_id,
    )
    if row is None:
        return  # closed already (by the reaper, or a retry)
    # A new statement, so its snapshot sees every record committed before the lock was ours.
    # The spend cap is spent in milli-fen: a record's cost; any other dimension: its units.
    used = await conn.fetchval(
        "SELECT coalesce(sum(CASE WHEN $2 = $3 THEN cost_millifen"
        " ELSE (units ->> $2)::bigint END), 0)::bigint FROM usage_records"
        " WHERE leases @> ARRAY[$1::uuid]",
        lease_id, row["dimension"], SPEND,
    )  # fmt: skip
    await conn.execute(
        "UPDATE quota_leases SET used = $2, closed_at = clock_timestamp() WHERE id = $1",
        lease_id, used,
    )  # fmt: skip
    quota = await conn.fetchrow(
        "UPDATE grant_quotas SET leased_units = leased_units - $3, used_units = used_units + $4"
        " WHERE grant_id = $1 AND dimension = $2"
        " RETURNING used_units, leased_units, limit_units",
        row["grant_id"], row["dimension"], row["units"], used,
    )  # fmt: skip
    if (
        on_exhausted is not None
        and quota is not None
        and quota["used_units"] >= quota["limit_units"]
        and quota["leased_units"] == 0
    ):
        await on_exhausted(conn, row["grant_id"], row["dimension"])


async def reap_expired(
    pool: asyncpg.Pool, on_exhausted: ExhaustedHook | None = None, limit: int = 500
) -> int:
    """Close leases past their expiry (their process died or hung): one transaction each."""
    ids = await pool.fetch(
        "SELECT id FROM quota_leases WHERE closed_at IS NULL AND expires_at < clock_timestamp()"
        " ORDER BY expires_at LIMIT $1",
        limit,
    )
    for row in ids:
        async with pool.acquire() as conn, conn.transaction():
            await _close(conn, row["id"], on_exhausted)
    return len(ids)


async def close_grant_leases(conn: Connection, grant_id: uuid.UUID) -> int:
    """Close every open lease of a grant in the caller's transaction (a billing period or the
    grant's end): waits for in-flight usage inserts under them, then counts."""
    rows = await conn.fetch(
        "SELECT id FROM quota_leases WHERE grant_id = $1 AND closed_at IS NULL ORDER BY id",
        grant_id,
    )
    for row in rows:
        await _close(conn, row["id"], None)
    return len(rows)


class LeaseBook:
    """One process's leases, spent in memory. `take` before serving, `done` after recording
    (or `give_back` when the request was not served)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        holder: str | None = None,
        ttl_seconds: float = LEASE_TTL_SECONDS,
        use_margin_seconds: float = USE_MARGIN_SECONDS,
        on_exhausted: ExhaustedHook | None = None,
    ) -> None:
        self.pool = pool
        self.holder = holder or holder_name()
        self.ttl = ttl_seconds
        self.margin = min(use_margin_seconds, ttl_seconds / 2)
        self.on_exhausted = on_exhausted
        self._leases: dict[tuple[uuid.UUID, str], list[_Lease]] = {}
        self._locks: dict[tuple[uuid.UUID, str], asyncio.Lock] = {}
        self._refills: dict[tuple[uuid.UUID, str], asyncio.Task[None]] = {}
        self.leased = 0  # leases taken (a figure for the benchmark)

    async def take(self, grant_id: uuid.UUID, needs: dict[str, int]) -> dict[str, uuid.UUID]:
        """Units for one request, per limited dimension: the lease each came from. Raises
        `QuotaExhausted` or `QuotaBusy`; on failure nothing stays taken."""
        taken: list[tuple[_Lease, int]] = []
        try:
            for dimension, n in sorted(needs.items()):
                if n <= 0:
                    continue
                lease = await self._take_one(grant_id, dimension, n)
                taken.append((lease, n))
        except BaseException:
            for lease, n in taken:
                self._untake(lease, n)
            raise
        return {lease.dimension: lease.id for lease, _ in taken}

    def _usable(self, lease: _Lease, n: int, now: float) -> bool:
        return not lease.retiring and lease.remaining >= n and now < lease.expires_at - self.margin

    async def _take_one(self, grant_id: uuid.UUID, dimension: str, n: int) -> _Lease:
        key = (grant_id, dimension)
        now = time.monotonic()
        for lease in self._leases.get(key, ()):
            if self._usable(lease, n, now):
                self._spend(lease, n, now)
                if lease.remaining < lease.units * REFILL_BELOW and key not in self._refills:
                    self._refill(key, n)
                return lease
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            now = time.monotonic()
            for lease in self._leases.get(key, ()):
                if self._usable(lease, n, now):
                    return self._spend(lease, n, now)
            # What is left on our leases is too little for this request: retire them first so
            # their units go back before we ask (the quota may be nearly used up).
            for lease in list(self._leases.get(key, ())):
                lease.retiring = True
                await self._maybe_close(lease)
            lease = await self._lease(grant_id, dimension, n)
            self._leases.setdefault(key, []).append(lease)
            return self._spend(lease, n, time.monotonic())

    def _refill(self, key: tuple[uuid.UUID, str], n: int) -> None:
        """Lease the next block of ``key`` in the background, unless one is already held."""

        async def refill() -> None:
            async with self._locks.setdefault(key, asyncio.Lock()):
                now = time.monotonic()
                leases = self._leases.get(key, [])
                if any(
                    self._usable(lease, n, now) and lease.remaining >= lease.units * REFILL_BELOW
                    for lease in leases
                ):
                    return  # a request leased the next block first
                try:
                    lease = await self._lease(key[0], key[1], n)
                except Exception:  # noqa: BLE001 (the request that needs it meets the reason)
                    return
                leases.append(lease)
                self._leases[key] = leases

        task = asyncio.create_task(refill(), name="lease-refill")
        self._refills[key] = task
        task.add_done_callback(lambda _: self._refills.pop(key, None))

    @staticmethod
    def _spend(lease: _Lease, n: int, now: float) -> _Lease:
        lease.remaining -= n
        lease.in_flight += 1
        lease.last_used = now
        return lease

    def _untake(self, lease: _Lease, n: int) -> None:
        lease.remaining += n
        lease.in_flight -= 1

    async def _lease(self, grant_id: uuid.UUID, dimension: str, n: int) -> _Lease:
        used_up = False
        async with self.pool.acquire() as conn, conn.transaction():
            # Only an active grant is leased units: once it is suspended or ended, the leases
            # out are closed by billing and no new one can follow them.
            state = await conn.fetchval(
                "SELECT state FROM grants WHERE id = $1 FOR SHARE", grant_id
            )
            if state != "active":
                refusal = STATE_REFUSALS.get(str(state), QuotaExhausted)
                raise refusal(f"grant {grant_id} is {state}", extensions={"state": state})
            row = await conn.fetchrow(
                "SELECT limit_units - used_units - leased_units AS free, leased_units"
                " FROM grant_quotas WHERE grant_id = $1 AND dimension = $2 FOR UPDATE",
                grant_id, dimension,
            )  # fmt: skip
            if row is None:
                raise QuotaExhausted(f"the grant has no {dimension} quota")
            free = row["free"]
            if free < n and row["leased_units"] > 0:
                raise QuotaBusy(
                    f"{free} {dimension} left and {row['leased_units']} held by another"
                    " gateway process; retry within a second",
                    extensions={"dimension": dimension, "retry_after": 1},
                )
            if free >= n:
                units = max(n, min(MAX_BLOCK_REQUESTS * n, free // 8))
                lease_id = uuid.uuid4()
                await conn.execute(
                    "UPDATE grant_quotas SET leased_units = leased_units + $3"
                    " WHERE grant_id = $1 AND dimension = $2",
                    grant_id, dimension, units,
                )  # fmt: skip
                await conn.execute(
                    "INSERT INTO quota_leases (id, grant_id, dimension, holder, units,"
                    " leased_at, expires_at) VALUES ($1, $2, $3, $4, $5, clock_timestamp(),"
                    " clock_timestamp() + make_interval(secs => $6))",
                    lease_id, grant_id, dimension, self.holder, units, self.ttl,
                )  # fmt: skip
            else:
                used_up = True
        if used_up:
            # Nothing is leased out and too little is left: the quota is used up for good.
            if self.on_exhausted is not None:
                async with self.pool.acquire() as conn, conn.transaction():
                    await self.on_exhausted(conn, grant_id, dimension)
            raise QuotaExhausted(
                f"the grant's {dimension} quota is used up ({n} needed, {free} left)",
                extensions={"dimension": dimension, "left": free},
            )
        self.leased += 1
        return _Lease(lease_id, grant_id, dimension, units, time.monotonic() + self.ttl, units)

    def _find(self, grant_id: uuid.UUID, dimension: str, lease_id: uuid.UUID) -> _Lease | None:
        for lease in self._leases.get((grant_id, dimension), ()):
            if lease.id == lease_id:
                return lease
        return None

    async def done(self, grant_id: uuid.UUID, taken: dict[str, uuid.UUID]) -> None:
        """The request these units were taken for is over (recorded, or refused at record)."""
        for dimension, lease_id in taken.items():
            lease = self._find(grant_id, dimension, lease_id)
            if lease is not None:
                lease.in_flight -= 1
                await self._maybe_close(lease)

    async def give_back(
        self, grant_id: uuid.UUID, taken: dict[str, uuid.UUID], needs: dict[str, int]
    ) -> None:
        """The request was not served: its units return to the lease unspent."""
        for dimension, lease_id in taken.items():
            lease = self._find(grant_id, dimension, lease_id)
            if lease is not None:
                lease.remaining += needs.get(dimension, 0)
                lease.in_flight -= 1
                await self._maybe_close(lease)

    async def _maybe_close(self, lease: _Lease) -> None:
        if not lease.retiring or lease.in_flight > 0:
            return
        key = (lease.grant_id, lease.dimension)
        leases = self._leases.get(key, [])
        if lease in leases:
            leases.remove(lease)
            async with self.pool.acquire() as conn, conn.transaction():
                await _close(conn, lease.id, self.on_exhausted)

    async def return_idle(self, idle_seconds: float = IDLE_RETURN_SECONDS) -> int:
        """Give back leases unused for ``idle_seconds`` or near expiry; returns how many."""
        now = time.monotonic()
        count = 0
        for leases in list(self._leases.values()):
            for lease in list(leases):
                if now - lease.last_used >= idle_seconds or now >= lease.expires_at - self.margin:
                    lease.retiring = True
                    if lease.in_flight == 0:
                        await self._maybe_close(lease)
                        count += 1
        return count

    def forget_grant(self, grant_id: uuid.UUID) -> None:
        """Stop using a grant's leases (it was suspended or ended): retire them."""
        for (grant, _), leases in self._leases.items():
            if grant == grant_id:
                for lease in leases:
                    lease.retiring = True

    async def close(self) -> None:
        """Return every lease (process shutdown)."""
        if self._refills:  # let them finish, so no lease is taken after its block came back
            await asyncio.wait(list(self._refills.values()))
        for leases in list(self._leases.values()):
            for lease in list(leases):
                lease.retiring = True
                lease.in_flight = 0
                await self._maybe_close(lease)

    def snapshot(self) -> list[dict[str, Any]]:
        return [
            {"lease": str(lease.id), "grant": str(lease.grant_id), "dimension": lease.dimension,
             "units": lease.units, "remaining": lease.remaining, "in_flight": lease.in_flight}
            for leases in self._leases.values() for lease in leases
        ]  # fmt: skip
