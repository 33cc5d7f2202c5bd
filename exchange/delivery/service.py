"""Grants: who may receive which data, how much, until when — and every change as an event.

The delivery room learns of trades from events only (``dx.trade.executed`` creates a grant per
delivery mode, ``dx.trade.reserved`` activates it, ``dx.trade.voided`` / ``failed`` revoke it)
and of listings from ``dx.listing.*`` (suspended → the grant suspends, published again → the
cause is lifted, delisted → revoked). It never imports the orders or settlement rooms: what it
asks of them (the negative list in force, money for a top-up) comes through hooks the
composition root fills (`DeliveryHooks`).

Every change goes through `_transition`: the grant's transition table gives the next state, the
row's ``version`` goes up, and a ``dx.grant.*`` event is written in the same transaction, so
gateway processes that keep grants in memory apply changes in order and never miss one.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from exchange.delivery import tokens
from exchange.delivery.schemas import (
    DeliveryToken,
    Grant,
    GrantSnapshot,
    ProductUsage,
    QuotaView,
    Upstream,
    UsageGroup,
    UsageGrouping,
    UsageTotals,
)
from exchange.delivery.states import EVENT_OF, GRANT, LIVE, GrantAction, SuspendCause
from exchange.platform.audit import Actor, record
from exchange.platform.auth import Principal, require_roles
from exchange.platform.clock import Clock
from exchange.platform.db import Connection, Executor
from exchange.platform.errors import Conflict, DataexError, InvalidInput, NotFound
from exchange.platform.events import GrantEventData, TradeExecutedData
from exchange.platform.metering import SPEND, Dimension
from exchange.platform.outbox import enqueue, enqueue_many
from exchange.platform.settings import Settings
from exchange.platform.signing import KeyRing
from exchange.platform.states import IllegalTransition

# The negative list in force refuses the product now (a reason), or does not (None).
PolicyRecheck = Callable[[Connection, uuid.UUID], Awaitable[str | None]]
# Settlement reserves more of the buyer's money for a metered trade; returns the new reserve.
TopUp = Callable[[Connection, uuid.UUID, uuid.UUID, int, str, datetime], Awaitable[int]]


class PolicyRefused(DataexError):
    status = 403
    code = "policy_refused"
    title = "The negative list in force refuses delivery of this product"


class OrganisationRefused(DataexError):
    status = 403
    code = "organisation_refused"
    title = "A party to the grant may not trade now"


@dataclass(frozen=True, slots=True)
class DeliveryHooks:
    policy_recheck: PolicyRecheck | None = None
    top_up: TopUp | None = None


_SELECT = "SELECT * FROM grants"
# Usage across grants, grouped: the grants' column it is grouped by, and the one that names it.
_USAGE_GROUPS: dict[str, tuple[str, str]] = {
    "product": ("product_id", "product_code"),
    "buyer": ("buyer_org_id", "buyer_uscc"),
}
_DIMENSIONS = msgspec.json.Decoder(list[Dimension])


def _dimensions(raw: Any) -> list[Dimension]:
    if isinstance(raw, (bytes, str)):
        return _DIMENSIONS.decode(raw)
    return msgspec.convert(raw, list[Dimension])


def snapshot_of(row: Any) -> GrantSnapshot:
    return GrantSnapshot(
        id=row["id"], trade_id=row["trade_id"], mode=row["mode"], state=row["state"],
        version=row["version"], buyer_org_id=row["buyer_org_id"], buyer_uscc=row["buyer_uscc"],
        seller_org_id=row["seller_org_id"], product_id=row["product_id"],
        product_code=row["product_code"], revision=row["revision"],
        dimensions=_dimensions(row["dimensions"]), spend_cap_fen=row["spend_cap_fen"],
        valid_until=row["valid_until"], suspended_by=list(row["suspended_by"]),
    )  # fmt: skip


class GrantService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Clock,
        settings: Settings,
        keyring: KeyRing,
        hooks: DeliveryHooks | None = None,
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.settings = settings
        self.keyring = keyring
        self.hooks = hooks or DeliveryHooks()
        self.source = f"urn:dataex:exchange:{settings.exchange_code}"

    # --- the one way a grant changes ----------------------------------------------------------

    async def _transition(
        self,
        conn: Connection,
        row: Any,
        action: GrantAction,
        at: datetime,
        *,
        add_cause: SuspendCause | None = None,
        lift_cause: SuspendCause | None = None,
        reason: str | None = None,
        request_id: str | None = None,
        revoked_jti: str | None = None,
        activated: bool = False,
    ) -> Any:
        """Apply ``action`` to a locked grant row; returns the new row (the event is written)."""
        state = GRANT.next(row["state"], action)
        causes = [c for c in row["suspended_by"] if c != lift_cause]
        if add_cause is not None and state == "suspended" and add_cause not in causes:
            causes.append(add_cause)
        if state != "suspended":
            causes = []
        new = await conn.fetchrow(
            "UPDATE grants SET state = $2, suspended_by = $3, reason = coalesce($4, reason),"
            " activated_at = CASE WHEN $5 THEN coalesce(activated_at, $6) ELSE activated_at END,"
            " version = version + 1, updated_at = $6 WHERE id = $1 RETURNING *",
            row["id"], state, sorted(causes), reason, activated, at,
        )  # fmt: skip
        await self._announce(conn, new, EVENT_OF[action], at, request_id, revoked_jti)
        return new

    async def _announce(
        self,
        conn: Connection,
        row: Any,
        event_type: str,
        at: datetime,
        request_id: str | None,
        revoked_jti: str | None = None,
    ) -> None:
        await enqueue(
            conn, subject=self.settings.subject("grant", event_type.rsplit(".", 1)[1]),
            event_type=event_type, source=self.source, event_subject=str(row["id"]),
            data=_event_data(row, revoked_jti),
            at=at, request_id=request_id,
        )  # fmt: skip

    async def _announce_many(
        self, conn: Connection, rows: Sequence[Any], event_type: str, at: datetime
    ) -> None:
        await enqueue_many(
            conn,
            [(self.settings.subject("grant", event_type.rsplit(".", 1)[1]), event_type,
              str(row["id"]), _event_data(row, None)) for row in rows],
            source=self.source, at=at, request_id=None,
        )  # fmt: skip

    async def _suspend(
        self, conn: Connection, row: Any, cause: SuspendCause, at: datetime, reason: str,
        request_id: str | None = None,
    ) -> Any:  # fmt: skip
        if row["state"] == "suspended" and cause in row["suspended_by"]:
            return row
        if not GRANT.allows(row["state"], "suspend") or row["state"] == "exhausted":
            return row
        return await self._transition(
            conn, row, "suspend", at, add_cause=cause, reason=reason, request_id=request_id
        )

    async def _lift(
        self, conn: Connection, row: Any, cause: SuspendCause, at: datetime,
        request_id: str | None = None,
    ) -> Any:  # fmt: skip
        if row["state"] != "suspended" or cause not in row["suspended_by"]:
            return row
        if len(row["suspended_by"]) > 1:
            return await self._transition(conn, row, "change", at, lift_cause=cause,
                                          request_id=request_id)  # fmt: skip
        action: GrantAction = "resume" if row["activated_at"] is not None else "resume_pending"
        return await self._transition(conn, row, action, at, lift_cause=cause,
                                      request_id=request_id)  # fmt: skip

    async def _end(
        self, conn: Connection, row: Any, action: GrantAction, at: datetime, reason: str,
        request_id: str | None = None,
    ) -> Any:  # fmt: skip
        if not GRANT.allows(row["state"], action):
            return row
        return await self._transition(conn, row, action, at, reason=reason,
                                      request_id=request_id)  # fmt: skip

    # --- what other rooms tell us (called by the delivery worker, in its transaction) --------

    async def on_trade_executed(self, conn: Connection, data: TradeExecutedData) -> int:
        return await self.on_trades_executed(conn, [data])

    async def on_trades_executed(
        self, conn: Connection, events: Sequence[TradeExecutedData]
    ) -> int:
        """One pending grant per delivery mode of each contract, for a batch of trades in three
        statements (a redelivery adds nothing). A pending grant is not announced: gateways know
        a grant from its activation on, and the row is the record of its creation."""
        now = self.clock.now()
        grants: list[tuple[Any, ...]] = []
        quotas: list[tuple[uuid.UUID, str, int]] = []
        for data in events:
            terms = data.delivery
            if terms is None:
                continue
            at = datetime.fromisoformat(data.executed_at)
            modes = list(terms.modes)
            metered = terms.pricing == "metered" and terms.spend_cap_fen is not None
            if metered:
                # One spend cap, one grant: a metered trade is delivered (and billed) through
                # its first mode, the API before files before the sandbox.
                modes = [m for m in ("api", "file", "sandbox") if m in modes][:1]
            dimensions = msgspec.json.encode(terms.dimensions).decode()
            for mode in modes:
                grant_id = uuid.uuid5(uuid.UUID(data.trade_id), mode)
                grants.append((
                    grant_id, uuid.UUID(data.trade_id), mode, uuid.UUID(data.buyer.org_id),
                    uuid.UUID(data.seller.org_id), data.buyer.uscc, data.seller.uscc,
                    uuid.UUID(terms.product_id), data.product_code, terms.revision,
                    terms.revision_digest, terms.plan_id, terms.pricing, terms.purpose,
                    ",".join(terms.territory), at, at + timedelta(days=terms.term_days),
                    dimensions, terms.spend_cap_fen if metered else None,
                ))  # fmt: skip
                quotas.extend((grant_id, d.name, d.quota) for d in terms.dimensions
                              if d.quota is not None)  # fmt: skip
                if metered and terms.spend_cap_fen is not None:
                    quotas.append((grant_id, SPEND, terms.spend_cap_fen * 1000))
        if not grants:
            return 0
        columns = list(zip(*grants, strict=True))
        created = await conn.fetch(
            "INSERT INTO grants (id, trade_id, mode, buyer_org_id, seller_org_id, buyer_uscc,"
            " seller_uscc, product_id, product_code, revision, revision_digest, plan_id, pricing,"
            " purpose, territory, valid_from, valid_until, dimensions, spend_cap_fen, state,"
            " created_at, updated_at)"
            " SELECT g.id, g.trade, g.mode, g.buyer, g.seller, g.buyer_uscc, g.seller_uscc,"
            " g.product, g.code, g.revision, g.digest, g.plan, g.pricing, g.purpose,"
            " string_to_array(g.territory, ','), g.valid_from, g.valid_until, g.dimensions::jsonb,"
            " g.cap, 'pending', $20::timestamptz, $20::timestamptz FROM unnest("
            " $1::uuid[], $2::uuid[], $3::text[], $4::uuid[], $5::uuid[], $6::text[], $7::text[],"
            " $8::uuid[], $9::text[], $10::int[], $11::text[], $12::text[], $13::text[],"
            " $14::text[], $15::text[], $16::timestamptz[], $17::timestamptz[], $18::text[],"
            " $19::bigint[]) AS g(id, trade, mode, buyer, seller, buyer_uscc, seller_uscc,"
            " product, code, revision, digest, plan, pricing, purpose, territory, valid_from,"
            " valid_until, dimensions, cap)"
            " ON CONFLICT (trade_id, mode) DO NOTHING RETURNING id, trade_id",
            *[list(column) for column in columns], now,
        )  # fmt: skip
        new = {row["id"] for row in created}
        mine = [q for q in quotas if q[0] in new]
        if mine:
            await conn.execute(
                "INSERT INTO grant_quotas (grant_id, dimension, limit_units)"
                " SELECT * FROM unnest($1::uuid[], $2::text[], $3::bigint[])",
                [q[0] for q in mine], [q[1] for q in mine], [q[2] for q in mine],
            )  # fmt: skip
        trades = sorted({row["trade_id"] for row in created})
        news = await conn.fetch(
            "DELETE FROM delivery_trade_news WHERE trade_id = ANY($1::uuid[])"
            " RETURNING trade_id, news",
            trades,
        )
        for item in news:  # settlement's news came first (a redelivery reordered them)
            if item["news"] == "reserved":
                await self.on_trades_reserved(conn, [item["trade_id"]])
            else:
                await self.on_trade_ended(conn, item["trade_id"], f"the trade {item['news']}")
        return len(created)

    async def _early(self, conn: Connection, trade_id: uuid.UUID, news: str) -> None:
        """Settlement's news of a trade whose grants do not exist (yet): kept for them."""
        await conn.execute(
            "INSERT INTO delivery_trade_news (trade_id, news, at) VALUES ($1, $2, $3)"
            " ON CONFLICT (trade_id) DO UPDATE SET news = EXCLUDED.news, at = EXCLUDED.at"
            " WHERE delivery_trade_news.news = 'reserved'",
            trade_id, news, self.clock.now(),
        )  # fmt: skip

    async def _rows(self, conn: Connection, where: str, *args: Any) -> list[Any]:
        return list(await conn.fetch(f"{_SELECT} WHERE {where} ORDER BY id FOR UPDATE", *args))

    async def on_trade_reserved(self, conn: Connection, trade_id: uuid.UUID) -> int:
        return await self.on_trades_reserved(conn, [trade_id])

    async def on_trades_reserved(self, conn: Connection, trade_ids: Sequence[uuid.UUID]) -> int:
        """Settlement holds the payments: the trades' pending grants become active, in one
        statement and one batch of events; news for trades without grants yet is kept."""
        now = self.clock.now()
        ids = sorted(set(trade_ids))
        activated = await conn.fetch(
            "UPDATE grants SET state = $2, activated_at = $3, version = version + 1,"
            " updated_at = $3 WHERE trade_id = ANY($1::uuid[]) AND state = 'pending'"
            " AND activated_at IS NULL RETURNING *",
            ids, GRANT.next("pending", "activate"), now,
        )  # fmt: skip
        if activated:
            await self._announce_many(conn, activated, "dx.grant.activated", now)
        # A grant suspended before its payment was held: remembered, active once resumed.
        for row in await self._rows(
            conn, "trade_id = ANY($1::uuid[]) AND state = 'suspended' AND activated_at IS NULL",
            ids,
        ):  # fmt: skip
            await self._transition(conn, row, "activate", now, activated=True)
        known = {r["trade_id"] for r in await conn.fetch(
            "SELECT DISTINCT trade_id FROM grants WHERE trade_id = ANY($1::uuid[])", ids
        )}  # fmt: skip
        for trade_id in ids:
            if trade_id not in known:
                await self._early(conn, trade_id, "reserved")
        return len(activated)

    async def on_trade_ended(self, conn: Connection, trade_id: uuid.UUID, why: str) -> int:
        """The trade was voided or could not be paid: its grants are revoked."""
        now = self.clock.now()
        if not await conn.fetchval("SELECT 1 FROM grants WHERE trade_id = $1 LIMIT 1", trade_id):
            await self._early(conn, trade_id, "voided" if "void" in why else "failed")
            return 0
        rows = await self._rows(conn, "trade_id = $1 AND state = ANY($2::text[])", trade_id,
                                [*LIVE, "exhausted"])  # fmt: skip
        for row in rows:
            await self._end(conn, row, "revoke", now, why)
        return len(rows)

    async def on_listing(self, conn: Connection, event: str, product_code: str,
                         reason: str | None) -> int:  # fmt: skip
        """``dx.listing.suspended`` / ``published`` / ``delisted`` for the grants of a product."""
        now = self.clock.now()
        rows = await self._rows(conn, "product_code = $1 AND state = ANY($2::text[])",
                                product_code, [*LIVE, "exhausted"])  # fmt: skip
        for row in rows:
            if event == "suspended":
                await self._suspend(conn, row, "listing", now,
                                    reason or "the listing is suspended")  # fmt: skip
            elif event == "published":
                await self._lift(conn, row, "listing", now)
            elif event == "delisted":
                await self._end(conn, row, "revoke", now, reason or "the product was delisted")
        return len(rows)

    async def on_organisation(
        self, conn: Connection, event: str, org_id: uuid.UUID, reason: str | None
    ) -> int:
        """``dx.organisation.suspended`` / ``reinstated``: the grants it buys or sells under."""
        now = self.clock.now()
        rows = await self._rows(
            conn, "(buyer_org_id = $1 OR seller_org_id = $1) AND state = ANY($2::text[])",
            org_id, [*LIVE, "exhausted"],
        )  # fmt: skip
        for row in rows:
            cause: SuspendCause = "buyer" if row["buyer_org_id"] == org_id else "seller"
            if event == "suspended":
                await self._suspend(conn, row, cause, now,
                                    reason or f"the {cause} is suspended")  # fmt: skip
            elif event == "reinstated":
                await self._lift(conn, row, cause, now)
        return len(rows)

    async def on_dispute_opened(
        self, conn: Connection, trade_id: uuid.UUID, reason: str, at: datetime,
        request_id: str | None,
    ) -> None:  # fmt: skip
        """A dispute over the trade suspends its live grants (cause ``dispute``, in the
        dispute's transaction): other causes stay as they are, and an exhausted or ended grant
        is left alone, as for a listing's suspension. Opening it twice changes nothing."""
        rows = await self._rows(conn, "trade_id = $1 AND state = ANY($2::text[])", trade_id,
                                list(LIVE))  # fmt: skip
        for row in rows:
            await self._suspend(conn, row, "dispute", at, reason, request_id)

    async def on_dispute_closed(
        self, conn: Connection, trade_id: uuid.UUID, at: datetime, request_id: str | None
    ) -> None:
        """The dispute is over (or its resolution gives the buyer time again): the ``dispute``
        cause is lifted from the trade's grants, which resume when no other cause holds."""
        rows = await self._rows(conn, "trade_id = $1 AND state = 'suspended'", trade_id)
        for row in rows:
            await self._lift(conn, row, "dispute", at, request_id)

    async def expire_due(self, limit: int = 500) -> int:
        """End grants whose term is over."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                f"{_SELECT} WHERE valid_until <= $1 AND state = ANY($2::text[])"
                " ORDER BY valid_until, id LIMIT $3 FOR UPDATE SKIP LOCKED",
                now, [*LIVE, "exhausted"], limit,
            )  # fmt: skip
            for row in rows:
                await self._end(conn, row, "expire", now, "the contract's term is over")
        return len(rows)

    async def exhausted(self, conn: Connection, grant_id: uuid.UUID, dimension: str) -> None:
        """A quota is used up (`quota.ExhaustedHook`): the spend cap suspends, any other
        dimension exhausts the grant."""
        row = await conn.fetchrow(f"{_SELECT} WHERE id = $1 FOR UPDATE", grant_id)
        if row is None:
            return
        now = self.clock.now()
        if dimension == SPEND:
            await self._suspend(conn, row, "spend_cap", now, "the spend cap is reached")
        elif GRANT.allows(row["state"], "exhaust") and row["state"] == "active":
            await self._transition(conn, row, "exhaust", now,
                                   reason=f"the {dimension} quota is used up")  # fmt: skip

    # --- staff -----------------------------------------------------------------------------

    async def _locked(self, conn: Connection, grant_id: uuid.UUID) -> Any:
        row = await conn.fetchrow(f"{_SELECT} WHERE id = $1 FOR UPDATE", grant_id)
        if row is None:
            raise NotFound(f"no grant {grant_id}")
        return row

    async def suspend(self, actor: Actor, grant_id: uuid.UUID, reason: str,
                      cause: SuspendCause = "exchange") -> Grant:  # fmt: skip
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._locked(conn, grant_id)
            if row["state"] not in LIVE:
                raise IllegalTransition(
                    f"cannot suspend a grant that is {row['state']}",
                    extensions={"aggregate": "grant", "state": row["state"], "action": "suspend",
                                "allowed_actions": GRANT.allowed(row["state"])},
                )  # fmt: skip
            await self._suspend(conn, row, cause, now, reason, actor.request_id)
            await record(
                conn, actor, at=now, action="grant.suspended", subject_type="grant",
                subject_id=grant_id, detail={"reason": reason, "cause": cause},
            )  # fmt: skip
            return await self._view(conn, grant_id)

    async def resume(self, actor: Actor, grant_id: uuid.UUID,
                     cause: SuspendCause = "exchange") -> Grant:  # fmt: skip
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._locked(conn, grant_id)
            if row["state"] != "suspended" or cause not in row["suspended_by"]:
                raise Conflict(
                    f"grant {grant_id} is not suspended by {cause}"
                    f" (state {row['state']}, causes {list(row['suspended_by'])})",
                    extensions={"state": row["state"], "suspended_by": list(row["suspended_by"])},
                )
            await self._lift(conn, row, cause, now, actor.request_id)
            await record(conn, actor, at=now, action="grant.resumed", subject_type="grant",
                         subject_id=grant_id, detail={"cause": cause})  # fmt: skip
            return await self._view(conn, grant_id)

    async def revoke(self, actor: Actor, grant_id: uuid.UUID, reason: str) -> Grant:
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._locked(conn, grant_id)
            GRANT.next(row["state"], "revoke")
            await self._end(conn, row, "revoke", now, reason, actor.request_id)
            await record(conn, actor, at=now, action="grant.revoked", subject_type="grant",
                         subject_id=grant_id, detail={"reason": reason})  # fmt: skip
            return await self._view(conn, grant_id)

    # --- the buyer ------------------------------------------------------------------------

    async def issue_token(
        self, actor: Actor, principal: Principal, grant_id: uuid.UUID, ttl_seconds: int
    ) -> DeliveryToken:
        """A delivery token, after re-checking the grant, both organisations and the negative
        list in force. Only the grant's buyer may ask."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(f"{_SELECT} WHERE id = $1", grant_id)
            if row is None or row["buyer_org_id"] != principal.org_id:
                raise NotFound(f"no grant {grant_id}")
            if row["state"] != "active" or row["valid_until"] <= now:
                state = "expired" if row["valid_until"] <= now else row["state"]
                refusal = tokens.STATE_REFUSALS.get(state, tokens.GrantRefused)
                raise refusal(
                    f"grant {grant_id} is {state}"
                    + (f" ({', '.join(row['suspended_by'])})" if row["suspended_by"] else ""),
                    extensions={"state": state, "suspended_by": list(row["suspended_by"])},
                )
            orgs = await conn.fetch(
                "SELECT id, roles, suspended_at FROM organisations WHERE id = ANY($1::uuid[])",
                [row["buyer_org_id"], row["seller_org_id"]],
            )
            by_id = {o["id"]: o for o in orgs}
            for party, org_id in (("buyer", row["buyer_org_id"]),
                                  ("seller", row["seller_org_id"])):  # fmt: skip
                org = by_id.get(org_id)
                if org is None or party not in org["roles"]:
                    raise OrganisationRefused(f"the {party} no longer holds its market role")
                if org["suspended_at"] is not None:
                    raise OrganisationRefused(
                        f"the {party} is suspended by the exchange", extensions={"party": party}
                    )
            if self.hooks.policy_recheck is not None:
                refused = await self.hooks.policy_recheck(conn, row["product_id"])
                if refused:
                    raise PolicyRefused(refused, extensions={"product_code": row["product_code"]})
            key = await self.keyring.current(conn, "delivery")
            token, claims = tokens.issue(
                key, exchange_code=self.settings.exchange_code, buyer_org_id=row["buyer_org_id"],
                buyer_uscc=row["buyer_uscc"], grant_id=grant_id, scope=row["mode"],
                now=now.timestamp(), ttl_seconds=ttl_seconds,
            )  # fmt: skip
            expires = datetime.fromtimestamp(claims.exp, tz=now.tzinfo)
            await conn.execute(
                "INSERT INTO delivery_tokens (jti, grant_id, scope, issued_to, issued_at,"
                " expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
                uuid.UUID(claims.jti), grant_id, claims.scope, principal.org_id, now, expires,
            )  # fmt: skip
            await record(
                conn, actor, at=now, action="grant.token_issued", subject_type="grant",
                subject_id=grant_id, detail={"jti": claims.jti, "exp": claims.exp},
            )  # fmt: skip
        return DeliveryToken(
            token=token, token_type="Bearer",  # noqa: S106
            jti=claims.jti, grant_id=grant_id,
            scope=claims.scope, expires_at=expires, kid=key.kid,
        )  # fmt: skip

    async def revoke_token(
        self, actor: Actor, principal: Principal, grant_id: uuid.UUID, jti: uuid.UUID
    ) -> None:
        """The buyer (or staff) withdraws a token, e.g. a leaked one: gateways refuse it."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._locked(conn, grant_id)
            staff = principal.has("admin", "reviewer")
            if row["buyer_org_id"] != principal.org_id and not staff:
                raise NotFound(f"no grant {grant_id}")
            done = await conn.fetchval(
                "UPDATE delivery_tokens SET revoked_at = $3 WHERE jti = $1 AND grant_id = $2"
                " AND revoked_at IS NULL RETURNING 1",
                jti, grant_id, now,
            )  # fmt: skip
            if not done:
                raise NotFound(f"no unrevoked token {jti} of grant {grant_id}")
            if GRANT.allows(row["state"], "change"):
                await self._transition(conn, row, "change", now, request_id=actor.request_id,
                                       revoked_jti=str(jti))  # fmt: skip
            await record(conn, actor, at=now, action="grant.token_revoked", subject_type="grant",
                         subject_id=grant_id, detail={"jti": str(jti)})  # fmt: skip

    async def top_up(
        self, actor: Actor, principal: Principal, grant_id: uuid.UUID, amount_fen: int, key: str
    ) -> Grant:
        """Reserve more money for a metered grant: its spend cap rises, a cap suspension lifts."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._locked(conn, grant_id)
            if row["buyer_org_id"] != principal.org_id:
                raise NotFound(f"no grant {grant_id}")
            if self.hooks.top_up is None:
                raise Conflict("top-ups are not available on this exchange")
            if row["spend_cap_fen"] is None:
                raise InvalidInput(f"grant {grant_id} is not metered: it has no spend cap")
            if row["state"] in ("expired", "revoked"):
                raise Conflict(f"grant {grant_id} is {row['state']}")
            reserved = await self.hooks.top_up(conn, row["trade_id"], principal.org_id,
                                               amount_fen, f"{grant_id}:{key}", now)  # fmt: skip
            if reserved != row["spend_cap_fen"]:
                # A replayed key reserves nothing new and leaves the cap where it is.
                await conn.execute(
                    "UPDATE grants SET spend_cap_fen = $2 WHERE id = $1", grant_id, reserved
                )
                await conn.execute(
                    "UPDATE grant_quotas SET limit_units = $3 WHERE grant_id = $1"
                    " AND dimension = $2",
                    grant_id, SPEND, reserved * 1000,
                )  # fmt: skip
                row = await self._locked(conn, grant_id)
                if row["state"] == "suspended" and "spend_cap" in row["suspended_by"]:
                    await self._lift(conn, row, "spend_cap", now, actor.request_id)
                else:
                    await self._transition(conn, row, "change", now, request_id=actor.request_id)
                await record(conn, actor, at=now, action="grant.topped_up", subject_type="grant",
                             subject_id=grant_id,
                             detail={"amount_fen": amount_fen, "key": key,
                                     "spend_cap_fen": reserved})  # fmt: skip
            return await self._view(conn, grant_id)

    # --- reading ---------------------------------------------------------------------------

    async def snapshot(self, grant_id: uuid.UUID) -> GrantSnapshot | None:
        row = await self.pool.fetchrow(f"{_SELECT} WHERE id = $1", grant_id)
        return None if row is None else snapshot_of(row)

    async def read(self, grant_id: uuid.UUID) -> Grant | None:
        """A grant for another room's own checks (the compute room's), without a caller."""
        async with self.pool.acquire() as conn:
            views = await self._views(conn, [grant_id])
        return views[0] if views else None

    async def snapshots(self, ids: Sequence[uuid.UUID]) -> list[GrantSnapshot]:
        rows = await self.pool.fetch(f"{_SELECT} WHERE id = ANY($1::uuid[])", list(ids))
        return [snapshot_of(row) for row in rows]

    async def _view(self, conn: Executor, grant_id: uuid.UUID) -> Grant:
        views = await self._views(conn, [grant_id])
        if not views:
            raise NotFound(f"no grant {grant_id}")
        return views[0]

    async def _views(self, conn: Executor, ids: list[uuid.UUID]) -> list[Grant]:
        rows = await conn.fetch(f"{_SELECT} WHERE id = ANY($1::uuid[])", ids)
        quotas = await conn.fetch(
            "SELECT * FROM grant_quotas WHERE grant_id = ANY($1::uuid[]) ORDER BY dimension", ids
        )
        by_id = {row["id"]: row for row in rows}
        return [_grant(by_id[i], [q for q in quotas if q["grant_id"] == i])
                for i in ids if i in by_id]  # fmt: skip

    async def get(self, principal: Principal, grant_id: uuid.UUID) -> Grant:
        async with self.pool.acquire() as conn:
            view = await self._view(conn, grant_id)
        staff = principal.has("admin", "reviewer")
        if not staff and principal.org_id not in (view.buyer_org_id, view.seller_org_id):
            raise NotFound(f"no grant {grant_id}")
        return view

    async def list_for(
        self,
        principal: Principal,
        *,
        state: str | None,
        product_code: str | None,
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
        buyer_org_id: uuid.UUID | None = None,
    ) -> list[Grant]:
        """The caller's grants (as buyer or seller); staff see every grant. Newest first;
        ``buyer_org_id`` narrows to one buyer's."""
        staff = principal.has("admin", "reviewer")
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id FROM grants WHERE ($1 OR buyer_org_id = $2 OR seller_org_id = $2)"
                " AND ($3::text IS NULL OR state = $3) AND ($4::text IS NULL OR product_code = $4)"
                " AND ($5::timestamptz IS NULL OR (created_at, id) < ($5, $6::uuid))"
                " AND ($8::uuid IS NULL OR buyer_org_id = $8)"
                " ORDER BY created_at DESC, id DESC LIMIT $7",
                staff, principal.org_id, state, product_code, after[0] if after else None,
                after[1] if after else None, limit, buyer_org_id,
            )  # fmt: skip
            return await self._views(conn, [row["id"] for row in rows])

    async def usage(self, principal: Principal, grant_id: uuid.UUID) -> UsageTotals:
        grant = await self.get(principal, grant_id)
        row: Any = await self.pool.fetchrow(
            "SELECT count(*) AS n, coalesce(sum(cost_millifen), 0)::bigint AS cost"
            " FROM usage_records"
            " WHERE grant_id = $1",
            grant_id,
        )
        totals = await self.pool.fetch(
            "SELECT key, sum(value::bigint)::bigint AS total FROM usage_records,"
            " jsonb_each_text(units) WHERE grant_id = $1 GROUP BY key ORDER BY key",
            grant_id,
        )
        periods: Any = await self.pool.fetchrow(
            "SELECT count(*) AS n, coalesce(sum(charge_fen), 0)::bigint AS charged"
            " FROM usage_periods"
            " WHERE grant_id = $1",
            grant_id,
        )
        return UsageTotals(
            grant_id=grant_id, product_code=grant.product_code, records=row["n"],
            totals={t["key"]: t["total"] for t in totals}, cost_millifen=row["cost"],
            periods=periods["n"], charged_fen=periods["charged"],
        )  # fmt: skip

    async def product_usage(self, principal: Principal, product_id: uuid.UUID) -> ProductUsage:
        """Usage of every grant of a product, for its seller (and staff): 404 to anyone else."""
        seller = await self.pool.fetchval(
            "SELECT seller_org_id FROM products WHERE id = $1", product_id
        )
        if seller is None or (
            seller != principal.org_id and not principal.has("admin", "reviewer")
        ):
            raise NotFound(f"no product {product_id} of yours")
        rows = await self.pool.fetch(
            """
            SELECT g.id, g.product_code, coalesce(r.n, 0) AS n, coalesce(r.cost, 0) AS cost,
                   coalesce(p.n, 0) AS periods, coalesce(p.charged, 0) AS charged,
                   coalesce(t.totals, '{}'::jsonb) AS totals
              FROM grants g
              LEFT JOIN LATERAL (SELECT count(*) AS n, sum(cost_millifen)::bigint AS cost
                                   FROM usage_records WHERE grant_id = g.id) r ON true
              LEFT JOIN LATERAL (SELECT count(*) AS n, sum(charge_fen)::bigint AS charged
                                   FROM usage_periods WHERE grant_id = g.id) p ON true
              LEFT JOIN LATERAL (SELECT jsonb_object_agg(key, total) AS totals
                                   FROM (SELECT key, sum(value::bigint)::bigint AS total
                                           FROM usage_records, jsonb_each_text(units)
                                          WHERE grant_id = g.id GROUP BY key) k) t ON true
             WHERE g.product_id = $1 ORDER BY g.created_at, g.id
            """,
            product_id,
        )
        per_grant = [
            UsageTotals(grant_id=r["id"], product_code=r["product_code"], records=r["n"],
                        totals=dict(r["totals"]), cost_millifen=r["cost"], periods=r["periods"],
                        charged_fen=r["charged"])
            for r in rows
        ]  # fmt: skip
        totals: dict[str, int] = {}
        for grant in per_grant:
            for name, n in grant.totals.items():
                totals[name] = totals.get(name, 0) + n
        return ProductUsage(
            product_id=product_id, product_code=rows[0]["product_code"] if rows else None,
            records=sum(g.records for g in per_grant), totals=totals,
            cost_millifen=sum(g.cost_millifen for g in per_grant),
            charged_fen=sum(g.charged_fen for g in per_grant), grants=per_grant,
        )  # fmt: skip

    async def usage_by(
        self,
        principal: Principal,
        by: UsageGrouping,
        *,
        after: tuple[str, uuid.UUID] | None,
        limit: int,
    ) -> list[UsageGroup]:
        """Staff's view of usage across grants, per product or per buyer: grants (and how many
        are live), records, units per dimension, cost, and what closed periods charged.
        Keyset-paged by (product code, product id) or (buyer's USCC, buyer id), ascending."""
        require_roles(principal, ("admin", "reviewer"))
        key, label = _USAGE_GROUPS[by]
        rows = await self.pool.fetch(
            f"""
            SELECT g.{key} AS key, coalesce(g.{label}, '') AS label, count(*) AS grants,
                   count(*) FILTER (WHERE g.state = ANY($4::text[])) AS live,
                   coalesce(sum(r.n), 0)::bigint AS records,
                   coalesce(sum(r.cost), 0)::bigint AS cost,
                   coalesce(sum(p.charged), 0)::bigint AS charged
              FROM grants g
              LEFT JOIN LATERAL (SELECT count(*) AS n, sum(cost_millifen) AS cost
                                   FROM usage_records WHERE grant_id = g.id) r ON true
              LEFT JOIN LATERAL (SELECT sum(charge_fen) AS charged
                                   FROM usage_periods WHERE grant_id = g.id) p ON true
             WHERE $1::text IS NULL OR (coalesce(g.{label}, ''), g.{key}) > ($1, $2::uuid)
             GROUP BY g.{key}, coalesce(g.{label}, '')
             ORDER BY label, key LIMIT $3
            """,
            *(after or (None, None)), limit, list(LIVE),
        )  # fmt: skip
        totals = await self.pool.fetch(
            f"""
            SELECT g.{key} AS key, u.key AS dimension, sum(u.value::bigint)::bigint AS total
              FROM grants g JOIN usage_records r ON r.grant_id = g.id,
                   jsonb_each_text(r.units) u
             WHERE g.{key} = ANY($1::uuid[]) GROUP BY g.{key}, u.key ORDER BY u.key
            """,
            [row["key"] for row in rows],
        )  # fmt: skip
        by_key: dict[uuid.UUID, dict[str, int]] = {}
        for total in totals:
            by_key.setdefault(total["key"], {})[total["dimension"]] = total["total"]
        return [
            UsageGroup(key=r["key"], label=r["label"], grants=r["grants"], live=r["live"],
                       records=r["records"], totals=by_key.get(r["key"], {}),
                       cost_millifen=r["cost"], charged_fen=r["charged"])
            for r in rows
        ]  # fmt: skip

    # --- upstreams (API delivery) -------------------------------------------------------------

    async def set_upstream(
        self, actor: Actor, principal: Principal, product_id: uuid.UUID, base_url: str
    ) -> Upstream:
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            seller = await conn.fetchval("SELECT seller_org_id FROM products WHERE id = $1",
                                         product_id)  # fmt: skip
            if seller is None or seller != principal.org_id:
                raise NotFound(f"no product {product_id} of yours")
            row: Any = await conn.fetchrow(
                "INSERT INTO delivery_upstreams (product_id, base_url, registered_by, created_at,"
                " updated_at) VALUES ($1, $2, $3, $4, $4) ON CONFLICT (product_id) DO UPDATE"
                " SET base_url = EXCLUDED.base_url, registered_by = EXCLUDED.registered_by,"
                " updated_at = EXCLUDED.updated_at RETURNING *",
                product_id, base_url.rstrip("/"), principal.org_id, now,
            )  # fmt: skip
            await record(conn, actor, at=now, action="delivery.upstream_set",
                         subject_type="product", subject_id=product_id,
                         detail={"base_url": base_url})  # fmt: skip
        return Upstream(product_id=row["product_id"], base_url=row["base_url"],
                        updated_at=row["updated_at"])  # fmt: skip

    async def upstream(self, product_id: uuid.UUID) -> str | None:
        value: str | None = await self.pool.fetchval(
            "SELECT base_url FROM delivery_upstreams WHERE product_id = $1", product_id
        )
        return value


async def trades_delivered(conn: Executor, trade_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
    """The trades among ``trade_ids`` under which anything was delivered: a call served or a
    byte of a file sent on any of their grants (every one is recorded before it goes out)."""
    rows = await conn.fetch(
        "SELECT DISTINCT g.trade_id FROM grants g WHERE g.trade_id = ANY($1::uuid[])"
        " AND EXISTS (SELECT 1 FROM usage_records u WHERE u.grant_id = g.id)",
        list(trade_ids),
    )
    return {row["trade_id"] for row in rows}


async def lock_trade_grants(conn: Connection, trade_id: uuid.UUID) -> None:
    """Lock the trade's grants (in id order) for the caller's transaction. The delivery room
    locks a grant before its trade's settlement row (billing, top-ups), so a room that will
    touch both — the disputes room — takes the grants first, and the two never deadlock."""
    await conn.execute("SELECT 1 FROM grants WHERE trade_id = $1 ORDER BY id FOR UPDATE", trade_id)


async def trade_has_live_grant(conn: Executor, trade_id: uuid.UUID, at: datetime) -> bool:
    """Whether the trade is within a grant's term: a grant pending, active, suspended or
    exhausted (the buyer holds what it received) whose term has not ended at ``at`` — the
    window in which the seller may open a dispute over the buyer's breach of the terms."""
    found = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM grants WHERE trade_id = $1 AND state = ANY($2::text[])"
        " AND valid_until > $3)",
        trade_id, [*LIVE, "exhausted"], at,
    )  # fmt: skip
    return bool(found)


async def revoked_jtis(pool: Executor) -> set[str]:
    """The jtis of revoked delivery tokens that have not expired yet (what a delivery point
    refuses besides what the token itself says)."""
    rows = await pool.fetch(
        "SELECT jti FROM delivery_tokens WHERE revoked_at IS NOT NULL"
        " AND expires_at > clock_timestamp() - interval '1 minute'"
    )
    return {str(r["jti"]) for r in rows}


def _event_data(row: Any, revoked_jti: str | None) -> GrantEventData:
    return GrantEventData(
        grant_id=str(row["id"]), trade_id=str(row["trade_id"]), mode=row["mode"],
        state=row["state"], version=row["version"], buyer_org_id=str(row["buyer_org_id"]),
        seller_org_id=str(row["seller_org_id"]), product_code=row["product_code"],
        suspended_by=list(row["suspended_by"]), valid_until=row["valid_until"].isoformat(),
        reason=row["reason"], revoked_jti=revoked_jti,
    )  # fmt: skip


def _grant(row: Any, quotas: list[Any]) -> Grant:
    return Grant(
        id=row["id"], trade_id=row["trade_id"], mode=row["mode"], state=row["state"],
        suspended_by=list(row["suspended_by"]), reason=row["reason"],
        buyer_org_id=row["buyer_org_id"], seller_org_id=row["seller_org_id"],
        product_id=row["product_id"], product_code=row["product_code"],
        revision=row["revision"], revision_digest=row["revision_digest"],
        plan_id=row["plan_id"], pricing=row["pricing"], purpose=row["purpose"],
        territory=list(row["territory"]), valid_from=row["valid_from"],
        valid_until=row["valid_until"], dimensions=_dimensions(row["dimensions"]),
        spend_cap_fen=row["spend_cap_fen"],
        quotas=[QuotaView(dimension=q["dimension"], limit=q["limit_units"],
                          used=q["used_units"], leased=q["leased_units"]) for q in quotas],
        version=row["version"], created_at=row["created_at"], updated_at=row["updated_at"],
    )  # fmt: skip
