"""Billing periods: usage records roll into signed statements, and metered ones into money.

A grant's records are closed into a period when the period is an hour old, early when the
spend cap is reached or a quota is used up, and finally when the grant ends. A period takes
every record not yet in a period that was served before its end. For an hourly close the end
is ``now - LEASE_TTL``: a record can be committed at most a lease's lifetime after it was
served (`exchange.delivery.quota`), so none can still arrive for that span and gateways are
never interrupted. An early or final close first closes the grant's leases (waiting for
inserts under them); since a lease is only granted to an active grant, nothing follows.

Each period is a `UsageStatement` (totals per dimension, cost in milli-fen, the charge in fen by
the rounding rule of `exchange.platform.metering`), signed by the exchange's key, stored, and
announced as ``dx.usage.closed``. For a metered grant the composition root's hook hands it to
settlement in the same transaction, which posts it exactly once keyed by (trade, period) and
appends it to the Merkle ledger; the final period is followed by settlement's release of what
was reserved and not spent. While a dispute holds the trade, settlement refuses both
(`TradeDisputed`) and the grant's period waits, unclosed, for a later round.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg
import msgspec

from exchange.delivery import quota
from exchange.platform.canonical import canonical_json
from exchange.platform.clock import Clock
from exchange.platform.db import Connection
from exchange.platform.disputes import TradeDisputed
from exchange.platform.events import UsageClosedData, UsageStatement
from exchange.platform.metering import period_charge_fen
from exchange.platform.outbox import enqueue
from exchange.platform.settings import Settings
from exchange.platform.signing import KeyRing

PERIOD: Final = timedelta(hours=1)
STATEMENT_TYPE: Final = "dataex-usage-statement+jws"
STALLED_REMEMBERED: Final = 10_000

# Settlement posts a metered period (returns the ledger seq) / releases the rest at the end.
PostUsage = Callable[[Connection, UsageStatement, str, str, datetime], Awaitable[int | None]]
Release = Callable[[Connection, uuid.UUID, datetime, str], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class BillingHooks:
    post_usage: PostUsage | None = None
    release: Release | None = None


def rfc3339(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Billing:
    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Clock,
        settings: Settings,
        keyring: KeyRing,
        hooks: BillingHooks | None = None,
        *,
        period: timedelta = PERIOD,
        settle_delay: timedelta = timedelta(seconds=quota.LEASE_TTL_SECONDS),
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.settings = settings
        self.keyring = keyring
        self.hooks = hooks or BillingHooks()
        self.period = period
        self.settle_delay = settle_delay
        # Grants whose last close made no progress (a dispute held it, `TradeDisputed`, or a
        # suspended grant's period is not over yet), with the round it was tried in: a round
        # takes them after every other due grant, the least recently tried first, so neither
        # a batch full of them nor the first of them by id keeps the rest from closing.
        self._stalled: dict[uuid.UUID, int] = {}
        self._round = 0

    async def close_due(self, limit: int = 200) -> int:
        """Close due periods, `limit` grants a round (each in its own transaction); returns how
        many closed. Grants whose last close made no progress go after the others, in turn."""
        now = self.clock.now()
        self._round += 1
        stalled = list(self._stalled.items())
        rows = await self.pool.fetch(
            """
            SELECT due.id FROM (
                SELECT id FROM grants
                 WHERE NOT books_closed AND activated_at IS NOT NULL
                   AND coalesce(billed_until, activated_at) <= $1
                UNION
                SELECT g.id FROM grants g
                 WHERE NOT g.books_closed AND g.activated_at IS NOT NULL AND g.state <> 'active'
                   AND (g.state IN ('expired', 'revoked')
                        OR EXISTS (SELECT 1 FROM usage_records r
                                    WHERE r.grant_id = g.id AND r.period_seq IS NULL))
            ) due
              LEFT JOIN unnest($3::uuid[], $4::bigint[]) AS stalled (id, tried)
                ON stalled.id = due.id
             ORDER BY stalled.tried NULLS FIRST, due.id
             LIMIT $2
            """,
            now - self.period, limit, [g for g, _ in stalled], [t for _, t in stalled],
        )  # fmt: skip
        closed = 0
        for row in rows:
            if await self.close(row["id"]) is not None:
                closed += 1
        return closed

    async def close(self, grant_id: uuid.UUID) -> UsageStatement | None:
        """Close the grant's due period now, if one is due; its statement. A metered grant
        whose trade a dispute holds is not closed (settlement refuses to post the period or
        release the trade, `TradeDisputed`): the whole close rolls back, its records stay
        unposted, and a later round closes the period once the dispute is resolved."""
        try:
            statement = await self._close(grant_id)
        except TradeDisputed:
            statement = None
        if statement is not None:
            self._stalled.pop(grant_id, None)
            return statement
        if len(self._stalled) >= STALLED_REMEMBERED:  # ones no longer due are never dropped
            self._stalled.clear()
        self._stalled[grant_id] = self._round
        return None

    async def _close(self, grant_id: uuid.UUID) -> UsageStatement | None:
        async with self.pool.acquire() as conn, conn.transaction():
            grant: Any = await conn.fetchrow(
                "SELECT * FROM grants WHERE id = $1 FOR UPDATE", grant_id
            )
            if grant is None or grant["activated_at"] is None or grant["books_closed"]:
                return None
            last_seq = await conn.fetchval(
                "SELECT max(seq) FROM usage_periods WHERE grant_id = $1", grant_id
            )
            now = self.clock.now()
            starts = grant["billed_until"] or grant["activated_at"]
            final = grant["state"] in ("expired", "revoked")
            early = grant["state"] == "exhausted" or (
                grant["state"] == "suspended" and "spend_cap" in grant["suspended_by"]
            )
            if final or early:
                await quota.close_grant_leases(conn, grant_id)
                ends = now
            elif now - starts >= self.period:
                ends = now - self.settle_delay
            else:
                return None
            if ends <= starts and not final:
                return None
            ends = max(ends, starts)
            totals = await conn.fetch(
                "SELECT key, sum(value::bigint)::bigint AS total"
                " FROM usage_records, jsonb_each_text(units)"
                " WHERE grant_id = $1 AND period_seq IS NULL AND served_at < $2"
                " GROUP BY key ORDER BY key",
                grant_id, ends,
            )  # fmt: skip
            counts: Any = await conn.fetchrow(
                "SELECT count(*) AS n, coalesce(sum(cost_millifen), 0)::bigint AS cost"
            " FROM usage_records"
                " WHERE grant_id = $1 AND period_seq IS NULL AND served_at < $2",
                grant_id, ends,
            )  # fmt: skip
            if counts["n"] == 0 and not final:
                if not early:  # an hour without use: no statement; the next period starts here
                    await conn.execute(
                        "UPDATE grants SET billed_until = $2 WHERE id = $1", grant_id, ends
                    )
                return None
            before = await conn.fetchval(
                "SELECT coalesce(sum(cost_millifen), 0)::bigint FROM usage_periods"
                " WHERE grant_id = $1",
                grant_id,
            )
            seq = (last_seq or 0) + 1
            statement = UsageStatement(
                exchange=self.settings.exchange_code, grant_id=str(grant_id),
                trade_id=str(grant["trade_id"]), product_code=grant["product_code"],
                buyer_org_id=str(grant["buyer_org_id"]),
                seller_org_id=str(grant["seller_org_id"]), period=seq,
                starts_at=rfc3339(starts), ends_at=rfc3339(ends), records=counts["n"],
                totals={t["key"]: int(t["total"]) for t in totals},
                cost_millifen=counts["cost"], cumulative_cost_millifen=before + counts["cost"],
                charge_fen=period_charge_fen(before, before + counts["cost"]), final=final,
            )  # fmt: skip
            body = canonical_json(msgspec.to_builtins(statement))
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            key = await self.keyring.current(conn)
            jws = key.sign_compact(msgspec.to_builtins(statement), typ=STATEMENT_TYPE)
            await conn.execute(
                "INSERT INTO usage_periods (grant_id, seq, starts_at, ends_at, records, totals,"
                " cost_millifen, charge_fen, final, statement, digest, jws, closed_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                grant_id, seq, starts, ends, counts["n"], statement.totals,
                counts["cost"], statement.charge_fen, final, body, digest, jws, now,
            )  # fmt: skip
            await conn.execute(
                "UPDATE usage_records SET period_seq = $3 WHERE grant_id = $1"
                " AND period_seq IS NULL AND served_at < $2",
                grant_id, ends, seq,
            )  # fmt: skip
            await conn.execute(
                "UPDATE grants SET billed_until = $2, books_closed = $3 WHERE id = $1",
                grant_id, ends, final,
            )  # fmt: skip
            metered = grant["pricing"] == "metered" and grant["spend_cap_fen"] is not None
            if metered and self.hooks.post_usage is not None:
                await self.hooks.post_usage(conn, statement, digest, jws, now)
            if metered and final and self.hooks.release is not None:
                await self.hooks.release(conn, grant["trade_id"], now,
                                         f"grant {grant_id} {grant['state']}")  # fmt: skip
            await enqueue(
                conn, subject=self.settings.subject("usage", "closed"),
                event_type="dx.usage.closed",
                source=f"urn:dataex:exchange:{self.settings.exchange_code}",
                event_subject=str(grant_id),
                data=UsageClosedData(statement=statement, digest=digest, jws=jws), at=now,
            )  # fmt: skip
            return statement


def statements_of(rows: list[Any]) -> list[dict[str, Any]]:
    """Stored periods as ``{statement, digest, jws}`` (for a receipt or a buyer's view)."""
    return [
        {"statement": msgspec.json.decode(bytes(r["statement"])), "digest": r["digest"],
         "jws": r["jws"]}
        for r in rows
    ]  # fmt: skip
