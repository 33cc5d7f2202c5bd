"""Orders to executed contracts: matching, policy at order time, drafting, signing, execution.

Every state change, its audit row and its outbox event commit in one transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast

import asyncpg
import msgspec

from contracts.agreements.origin import cleared_by_origin, origin_exchange
from contracts.agreements.signatures import custodial_key, verify_detached
from contracts.agreements.templates import ContractTemplate, render_text, templates
from contracts.orders.fees import rule_from
from contracts.orders.group import Job, OrderGroup
from contracts.orders.idempotency import Keyed, Replay, in_flight, lock_key_sql, stored
from contracts.orders.matching import match, payment
from contracts.orders.schemas import Order, OrderCreate, TermMismatch
from contracts.orders.states import CONTRACT, ORDER, ContractState, placed_state
from contracts.orders.writes import ContractRow, IdempotencyRow, OrderRow, Writes
from contracts.policy import store as policy_store
from contracts.policy.attributes import EvaluationDocument, Exporter
from contracts.policy.attributes import Order as PolicyOrder
from contracts.policy.evaluator import evaluate
from contracts.policy.routing import counting_year_start
from contracts.policy.rules import PolicyList
from contracts.policy.schemas import Decision
from contracts.policy.service import PolicyService
from contracts.policy.store import DecisionRow
from exchange.identity import repository as identity_repo
from exchange.listings.lifecycle import evaluation_document
from exchange.listings.schemas import Plan, ProductMetadata
from exchange.listings.service import fetch_revision
from exchange.platform import metrics
from exchange.platform.audit import Actor, record
from exchange.platform.auth import Principal
from exchange.platform.canonical import canonical_json, sha256_digest
from exchange.platform.clock import Clock
from exchange.platform.db import Connection, Executor
from exchange.platform.errors import (
    Conflict,
    DataexError,
    FieldError,
    Forbidden,
    InvalidInput,
    NotFound,
    Unavailable,
)
from exchange.platform.events import DeliveryTerms, OrderEventData, TradeExecutedData, TradeParty
from exchange.platform.settings import Settings
from exchange.platform.signing import KeyRing, SigningKey, jws_header
from exchange.review.schemas import ReviewCase
from exchange.review.service import open_case, withdraw_open_cases

SIGNATURE_TYPE = "dataex-contract-signature+jws"
# Everything placing orders reads, in one round trip: for each order (a row of the arrays $1
# product, $2 plan, $3 buyer organisation, $5 Idempotency-Key; numbered n from 1) the product
# (locked FOR SHARE so it cannot be suspended or revised under the order), its live revision,
# both parties (the seller with what staff recorded of it as a data exporter), the plan's
# standing offer, the buyer's custodial key, the exchange's current key, the policy list in
# effect at $4, the fee rule in effect, the listing review that may have cleared cautious hits,
# and the key's advisory lock and stored result. An order whose product does not exist has no
# row.
#
# The order room's one declared cross-room read model: it reads tables the listing, identity,
# review, agreements and policy rooms own (never writes them) in one statement, because the
# order path's budget is about one round trip per group of orders (README, group commit).
# Those rooms' own functions give the same facts one query each; a change to their tables'
# columns named here must change this statement too (the order tests cover every one).
_PLACE_SQL = (
    """
SELECT j.n, p.id, p.seller_org_id, p.state, p.live_revision, p.product_code, p.legal_prohibition,
       p.recognised_from, p.certificate AS listing_certificate, pe.name AS origin_name,
       rg.cleared AS origin_cleared, r.digest AS revision_digest,
       s.name AS seller_name, s.uscc AS seller_uscc, b.name AS buyer_name, b.uscc AS buyer_uscc,
       s.ciio AS seller_ciio, s.export_exemption AS seller_exemption,
       s.ftz_exempt AS seller_ftz_exempt, so.offer_digest, so.jws AS offer_jws,
       bk.kid AS buyer_kid, bk.sealed_private AS buyer_sealed,
       ek.kid AS exchange_kid, ek.sealed_private AS exchange_sealed,
       pl.version AS list_version, pl.digest AS list_digest,
       fee.bps AS fee_bps, fee.min_fen AS fee_min_fen, fee.product_id AS fee_product_id,
       fee.plan_id AS fee_plan_id, fee.effective_from AS fee_effective_from,
       rc.case_rules, rc.case_list_version, rc.material_since,
       CASE WHEN j.key IS NULL THEN true
            ELSE pg_try_advisory_xact_lock("""
    + lock_key_sql("j.org_id", "j.key")
    + """)
       END AS idem_free,
       ik.request_hash AS idem_request_hash, ik.route AS idem_route, ik.status AS idem_status,
       ik.response AS idem_response, ik.created_at AS idem_created_at
FROM unnest($1::uuid[], $2::text[], $3::uuid[], $5::text[])
         WITH ORDINALITY AS j (product_id, plan_id, org_id, key, n)
JOIN products p ON p.id = j.product_id
LEFT JOIN product_revisions r ON r.product_id = p.id AND r.number = p.live_revision
JOIN organisations s ON s.id = p.seller_org_id
LEFT JOIN organisations b ON b.id = j.org_id
LEFT JOIN standing_offers so
       ON so.product_id = p.id AND so.revision = p.live_revision AND so.plan_id = j.plan_id
LEFT JOIN LATERAL (
    SELECT kid, sealed_private FROM org_keys
    WHERE org_id = j.org_id AND sealed_private IS NOT NULL AND revoked_at IS NULL LIMIT 1
) bk ON true
LEFT JOIN LATERAL (
    SELECT kid, sealed_private FROM signing_keys WHERE purpose = 'exchange'
    ORDER BY created_at DESC, kid LIMIT 1
) ek ON true
LEFT JOIN LATERAL (
    SELECT version, digest FROM policy_lists WHERE effective_from <= $4
    ORDER BY effective_from DESC LIMIT 1
) pl ON true
LEFT JOIN LATERAL (
    SELECT bps, min_fen, product_id, plan_id, effective_from FROM fee_schedules
    WHERE effective_from <= $4
      AND ((product_id = p.id AND plan_id = j.plan_id) OR product_id IS NULL)
    ORDER BY product_id IS NULL, effective_from DESC, id DESC LIMIT 1
) fee ON true
LEFT JOIN LATERAL (
    -- Material revisions after the approved one that went live unreviewed here (a recognised
    -- product's); one the review refused (rejected, changes requested) never went live, and a
    -- cosmetic revision after it carries the approved revision's classification.
    SELECT c.rules AS case_rules, d.list_version AS case_list_version,
           (SELECT count(*) FROM product_revisions x WHERE x.product_id = p.id
              AND x.number > c.revision AND x.number <= p.live_revision
              AND x.change <> 'cosmetic'
              AND NOT EXISTS (SELECT 1 FROM review_cases xc WHERE xc.kind = 'listing'
                                AND xc.subject_id = p.id AND xc.revision = x.number
                                AND xc.state IN ('rejected', 'changes_requested')))
             AS material_since
    FROM review_cases c JOIN policy_decisions d ON d.id = c.policy_decision_id
    WHERE c.kind = 'listing' AND c.subject_id = p.id AND c.state = 'approved'
      AND c.revision <= p.live_revision
    ORDER BY c.revision DESC LIMIT 1
) rc ON true
LEFT JOIN LATERAL (  -- a lookup by primary key for each order, whatever the table's size
    SELECT request_hash, route, status, response, created_at FROM idempotency_keys
    WHERE org_id = j.org_id AND key = j.key LIMIT 1
) ik ON true
LEFT JOIN peers pe ON pe.code = p.recognised_from
LEFT JOIN recognitions rg
       ON rg.product_id = p.id AND rg.revision = p.live_revision AND rg.outcome = 'recognised'
ORDER BY j.n
FOR SHARE OF p
"""
)
_DRAFT_SQL = """
SELECT o.*, p.product_code, r.metadata, r.digest AS revision_digest,
       p.recognised_from, p.certificate AS listing_certificate, pe.name AS origin_name,
       s.name AS seller_name, s.uscc AS seller_uscc, b.name AS buyer_name, b.uscc AS buyer_uscc,
       so.offer_digest, so.jws AS offer_jws
FROM orders o
JOIN products p ON p.id = o.product_id
JOIN product_revisions r ON r.product_id = o.product_id AND r.number = o.revision
JOIN organisations s ON s.id = o.seller_org_id
JOIN organisations b ON b.id = o.buyer_org_id
LEFT JOIN standing_offers so
       ON so.product_id = o.product_id AND so.revision = o.revision AND so.plan_id = o.plan_id
LEFT JOIN peers pe ON pe.code = p.recognised_from
WHERE o.id = $1
"""
_STORED_SQL = (
    "SELECT request_hash AS idem_request_hash, route AS idem_route, status AS idem_status,"
    " response AS idem_response, created_at AS idem_created_at FROM idempotency_keys"
    " WHERE org_id = $1 AND key = $2"
)
_CONTRACT_SQL = (
    "SELECT c.*, o.buyer_org_id, o.seller_org_id, o.state AS order_state FROM trade_contracts c"
    " JOIN orders o ON o.id = c.order_id WHERE c.id = $1"
)
STAFF = ("reviewer", "admin")
# Revisions never change (the table refuses UPDATE): decoded metadata is kept by digest.
_METADATA: dict[str, ProductMetadata] = {}
_METADATA_KEPT = 4096


@dataclass(frozen=True, slots=True)
class PartyView:
    id: uuid.UUID
    name: str
    uscc: str | None


@dataclass(frozen=True, slots=True)
class _Facts:
    """What a contract names about its order."""

    order_id: uuid.UUID
    product_id: uuid.UUID
    revision: int
    plan: Plan
    terms: OrderCreate
    price_fen: int
    fee_fen: int
    fee_bps: int | None  # metered plans: the fee on each billing period's charge
    decision: dict[str, Any]
    product_code: str
    metadata: ProductMetadata
    revision_digest: str
    seller: PartyView
    buyer: PartyView
    offer: tuple[str, str] | None  # the standing offer's digest and JWS
    origin: dict[str, Any]  # the exchange a recognised product was listed at; {} when local


@dataclass(frozen=True, slots=True)
class _Contract:
    id: uuid.UUID
    digest: str
    executed: bool
    row: ContractRow


async def _metadata(
    conn: Executor, product_id: uuid.UUID, number: int, digest: str
) -> ProductMetadata:
    metadata = _METADATA.get(digest)
    if metadata is None:
        metadata = (await fetch_revision(conn, product_id, number)).metadata
        if len(_METADATA) >= _METADATA_KEPT:
            _METADATA.pop(next(iter(_METADATA)))
        _METADATA[digest] = metadata
    return metadata


async def _stored_or_free(
    conn: Connection, ctx: Any, principal: Principal, idempotency: Keyed | None, now: datetime
) -> Replay | None:
    """The stored result for the request's key; None when the key is free (taken by this
    transaction's advisory lock, an expired row deleted). 409 while another request holds it."""
    if idempotency is None:
        return None
    if not ctx["idem_free"]:
        raise in_flight()
    replay = stored(ctx, idempotency.digest, idempotency.route, now)
    if replay is None and ctx["idem_request_hash"] is not None:  # expired: free again
        await conn.execute(
            "DELETE FROM idempotency_keys WHERE org_id = $1 AND key = $2",
            principal.org_id, idempotency.key,
        )  # fmt: skip
    return replay


def _mismatch_error(mismatches: list[TermMismatch]) -> InvalidInput:
    return InvalidInput(
        "the order does not match the offer: "
        + "; ".join(f"{m.term}: asked {m.asked!r}, offered {m.offered!r}" for m in mismatches),
        errors=[
            FieldError(
                path=m.term, message=f"asked {m.asked!r}, offered {m.offered!r}", source="body"
            )
            for m in mismatches
        ],
        extensions={"mismatches": msgspec.to_builtins(mismatches)},
    )


def contract_document(
    settings: Settings,
    contract_id: uuid.UUID,
    template: ContractTemplate,
    facts: _Facts,
    at: datetime,
) -> dict[str, Any]:
    """The contract as a canonical-JSON-ready document (its digest is what the parties sign)."""
    metadata, terms, plan = facts.metadata, facts.terms, facts.plan
    policy = facts.decision["policy"]
    rights = metadata.rights
    granted = [
        name
        for name, on in (
            ("数据资源持有权", rights.holding),
            ("数据加工使用权", rights.use),
            ("数据产品经营权", rights.operating),
        )
        if on
    ]
    values = {
        "product_name": metadata.name_zh, "product_code": facts.product_code,
        "revision": str(facts.revision), "revision_digest": facts.revision_digest,
        "scale": ", ".join(f"{k}={v}" for k, v in msgspec.to_builtins(metadata.manual.scale)
                           .items() if v is not None),
        "source": metadata.source.kind, "rights": "、".join(granted),
        "purpose": terms.purpose, "territory": "、".join(terms.territory),
        "term_days": str(terms.term_days),
        "redistribution": "允许再分发" if terms.redistribution else "不得转售或再分发",
        "delivery": "、".join(metadata.delivery),
        "price_yuan": f"{facts.price_fen / 100:.2f}", "price_fen": str(facts.price_fen),
        "pricing": plan.pricing, "quantity": str(terms.quantity),
        "fee_fen": str(facts.fee_fen), "acceptance_days": str(plan.acceptance_days),
        "policy_summary": f"{policy['decision']}(清单 {policy['list_version']})",
        "exchange_name": settings.exchange_name,
    }  # fmt: skip
    seller, buyer = facts.seller, facts.buyer
    return {
        "contract_id": str(contract_id),
        "order_id": str(facts.order_id),
        "template": {"id": template.id, "version": template.version,
                     "title_zh": template.title_zh},
        "exchange": {"code": settings.exchange_code, "name": settings.exchange_name},
        "parties": {
            "provider": {"org_id": str(seller.id), "name": seller.name, "uscc": seller.uscc},
            "recipient": {"org_id": str(buyer.id), "name": buyer.name, "uscc": buyer.uscc},
        },
        "subject_data": {
            "product_code": facts.product_code, "name_zh": metadata.name_zh,
            "revision": facts.revision, "revision_digest": facts.revision_digest,
        },
        "rights": msgspec.to_builtins(rights),
        "usage": {"purpose": terms.purpose, "territory": list(terms.territory),
                  "term_days": terms.term_days, "redistribution": terms.redistribution},
        "delivery": list(metadata.delivery),
        "acceptance_days": plan.acceptance_days,
        "fees": {"pricing": plan.pricing, "quantity": terms.quantity,
                 "price_fen": facts.price_fen, "fee_fen": facts.fee_fen, "currency": "CNY"},
        # What delivery grants under the contract and how a metered plan bills: its dimensions
        # (quotas, unit prices), the spend cap (the price) and the fee on each period's charge.
        "delivery_terms": {
            "product_id": str(facts.product_id), "plan_id": plan.id, "pricing": plan.pricing,
            "dimensions": msgspec.to_builtins(plan.dimensions),
            "spend_cap_fen": terms.spend_cap_fen, "fee_bps": facts.fee_bps,
        },
        "policy": {"decision": policy["decision"], "list_version": policy["list_version"],
                   "list_digest": policy["list_digest"],
                   "route": (policy.get("cross_border") or {}).get("route"),
                   "cleared": facts.decision["cleared"]},
        "seller_acceptance": (
            {"standing_offer_digest": facts.offer[0]} if facts.offer else None
        ),
        "clauses": template.render_clauses(values),
        "created_at": at.isoformat(),
    } | facts.origin  # fmt: skip


def offer_terms(
    code: str,
    revision: int,
    digest: str,
    metadata: ProductMetadata,
    plan_id: str,
    seller_uscc: str | None,
) -> dict[str, Any]:
    """What a seller signs once to accept every order that matches a plan (a standing offer)."""
    plan = next(p for p in metadata.plans if p.id == plan_id)
    return {
        "type": "dataex-standing-offer",
        "product_code": code,
        "revision": revision,
        "revision_digest": digest,
        "seller_uscc": seller_uscc,
        "plan": msgspec.to_builtins(plan),
    }


class OrderService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Clock,
        settings: Settings,
        keyring: KeyRing,
        group: OrderGroup | None = None,
    ) -> None:
        self.pool = pool
        self.group = group
        self.clock = clock
        self.settings = settings
        self.keyring = keyring
        self.policy = PolicyService(pool, clock)

    # --- reading ------------------------------------------------------------------------

    async def _view(self, conn: Executor, row: Any) -> Order:
        contract = await conn.fetchrow(
            "SELECT id, digest FROM trade_contracts WHERE order_id = $1", row["id"]
        )
        case_id = await conn.fetchval(
            "SELECT id FROM review_cases WHERE kind = 'order' AND subject_id = $1"
            " ORDER BY opened_at DESC LIMIT 1",
            row["id"],
        )
        decision = row["decision"]
        return Order(
            id=row["id"],
            state=row["state"],
            buyer_org_id=row["buyer_org_id"],
            seller_org_id=row["seller_org_id"],
            product_id=row["product_id"],
            revision=row["revision"],
            terms=msgspec.convert(row["terms"], OrderCreate),
            price_fen=row["price_fen"],
            fee_fen=row["fee_fen"],
            policy=msgspec.convert(decision["policy"], Decision),
            cleared=decision["cleared"],
            contract_id=contract["id"] if contract else None,
            contract_digest=contract["digest"] if contract else None,
            trade_id=contract["id"] if contract and row["state"] == "executed" else None,
            review_case_id=case_id,
            reason=row["reason"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )

    async def _party_row(
        self, conn: Executor, principal: Principal, order_id: uuid.UUID, *, lock: bool = False
    ) -> Any:
        row = await conn.fetchrow(
            "SELECT * FROM orders WHERE id = $1" + (" FOR UPDATE" if lock else ""), order_id
        )
        party = row is not None and principal.org_id in (row["buyer_org_id"], row["seller_org_id"])
        if row is None or not (party or principal.has(*STAFF)):
            raise NotFound(f"no order {order_id}")
        return row

    async def get(self, principal: Principal, order_id: uuid.UUID) -> Order:
        return await self._view(self.pool, await self._party_row(self.pool, principal, order_id))

    async def list_for(
        self, principal: Principal, *, after: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> list[Order]:
        key = after or (datetime.max.replace(tzinfo=self.clock.now().tzinfo), uuid.UUID(int=0))
        rows = await self.pool.fetch(
            "SELECT * FROM orders WHERE (buyer_org_id = $1 OR seller_org_id = $1)"
            " AND (created_at, id) < ($2, $3) ORDER BY created_at DESC, id DESC LIMIT $4",
            principal.org_id, key[0], key[1], limit,
        )  # fmt: skip
        return [await self._view(self.pool, row) for row in rows]

    async def placed_since(self, since: datetime) -> int:
        """Orders placed at or after ``since``, whatever became of them (the staff dashboard's
        "orders today"). On PostgreSQL 18 a skip scan of ``orders_buyer`` (buyer, created_at)
        reads only those orders' index entries (measured: 16 ms for a day's 66,000 orders among
        2,000,000 of 1,000 buyers); older servers scan the table."""
        count = await self.pool.fetchval(
            "SELECT count(*) FROM orders WHERE created_at >= $1", since
        )
        return int(count)

    # --- placing ------------------------------------------------------------------------

    async def exporter_counts(self, conn: Executor, seller_org_id: uuid.UUID) -> tuple[int, int]:
        """Individuals whose personal information the seller exported this year, from its
        executed cross-border trades: (non-sensitive, sensitive). Only identifiable personal
        information counts, and not a trade voided or failed before any delivery
        (``counted_pi_subjects``)."""
        row = await _one(conn,
            "SELECT coalesce(sum(counted_pi_subjects) FILTER (WHERE NOT sensitive_pi), 0) AS n,"
            "       coalesce(sum(counted_pi_subjects) FILTER (WHERE sensitive_pi), 0) AS s"
            " FROM orders WHERE seller_org_id = $1 AND state = 'executed' AND cross_border"
            " AND executed_at >= $2",
            seller_org_id, counting_year_start(self.clock.now()),
        )  # fmt: skip
        assert row is not None
        return int(row["n"]), int(row["s"])

    async def place(
        self,
        actor: Actor,
        principal: Principal,
        data: OrderCreate,
        idempotency: Keyed | None = None,
    ) -> Order | Replay:
        """Place an order: match, evaluate, and (when nothing holds it) draft the contract, sign
        it for custodial parties and execute it when all have signed.

        One read of everything the order needs (the product locked FOR SHARE, so it cannot be
        suspended or revised underneath), then one statement of every row it writes. With an
        Idempotency-Key the result is stored by that statement, or the stored one returned.
        With a `OrderGroup` (the API's), concurrent orders share the transaction, the read and
        the write (group commit); each still gets its own answer."""
        job = Job(
            (principal.org_id, idempotency.key) if idempotency else None,
            (actor, principal, data, idempotency),
        )
        if self.group is None:
            placed = await self._place_alone(job)
        else:
            placed = cast(
                Order | Replay, await self.group.place(job, self._place_group, self._place_alone)
            )
        if isinstance(placed, Order):  # committed: counted once, whichever way it was placed
            metrics.ORDERS_PLACED.labels(placed.state).inc()
            metrics.count_decision("order", placed.policy.decision,
                                   (hit.rule for hit in placed.policy.hits))  # fmt: skip
        return placed

    async def _place_alone(self, job: Job) -> Order | Replay:
        _actor, principal, _data, idempotency = job.args
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                [result] = await self._place_many(conn, [job])
        except asyncpg.UniqueViolationError as error:
            if idempotency is None or error.constraint_name != "idempotency_keys_pkey":
                raise
        else:
            if isinstance(result, Exception):
                raise result
            return result
        # Another request with the key committed between this one's snapshot and its lock:
        # this one is rolled back whole; answer with what the first stored.
        row = await self.pool.fetchrow(_STORED_SQL, principal.org_id, idempotency.key)
        replay = (
            stored(row, idempotency.digest, idempotency.route, self.clock.now()) if row else None
        )
        if replay is None:
            raise in_flight()
        return replay

    async def _place_group(self, jobs: list[Job]) -> list[Order | Replay | DataexError]:
        async with self.pool.acquire() as conn, conn.transaction():
            return await self._place_many(conn, jobs)

    async def _place_many(
        self, conn: Connection, jobs: list[Job]
    ) -> list[Order | Replay | DataexError]:
        """Place orders in the caller's transaction: one read for all, then each judged on its
        own (a refused order's error is its result and it writes nothing), then one statement
        writing every placed order's rows."""
        # Generic plans: the planner sees the read's arrays as constants, so the custom plan it
        # judged cheaper was made afresh for every group (1.9 ms of planning for 0.5 ms of
        # execution at 250 orders/s); the generic plan runs as fast (0.5 ms) and is made once
        # per connection, and again when the tables' statistics change.
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        now = self.clock.now()
        ctxs = {
            row["n"]: row
            for row in await conn.fetch(
                _PLACE_SQL,
                [job.args[2].product_id for job in jobs],
                [job.args[2].plan_id for job in jobs],
                [job.args[1].org_id for job in jobs],
                now,
                [job.args[3].key if job.args[3] else None for job in jobs],
            )
        }
        results: list[Order | Replay | DataexError] = []
        writes = Writes()
        cases: list[tuple[Order, Decision]] = []
        exported: dict[uuid.UUID, tuple[int, int]] = {}  # by this group's earlier orders
        for n, job in enumerate(jobs, start=1):
            actor, principal, data, idempotency = job.args
            try:
                placed = await self._prepare(
                    conn, ctxs.get(n), actor, principal, data, idempotency, now, exported
                )
            except DataexError as error:
                results.append(error)
                continue
            if isinstance(placed, Replay):
                results.append(placed)
                continue
            order, order_writes, held = placed
            writes.extend(order_writes)
            results.append(order)
            if held is not None:
                cases.append((order, held))
        await writes.flush(conn)
        for order, held in cases:
            await open_case(
                conn, kind="order", subject_id=order.id, subject_org_id=order.buyer_org_id,
                revision=order.revision, decision=held, policy_decision_id=None,
                at=now, case_id=order.review_case_id,
            )  # fmt: skip
        return results

    async def _prepare(
        self,
        conn: Connection,
        ctx: Any,
        actor: Actor,
        principal: Principal,
        data: OrderCreate,
        idempotency: Keyed | None,
        now: datetime,
        exported: dict[uuid.UUID, tuple[int, int]],
    ) -> Replay | tuple[Order, Writes, Decision | None]:
        """One order from what `_PLACE_SQL` read for it: its stored result, or the order, the
        rows it writes and (when it waits for review) the hits that hold it."""
        if ctx is None:
            raise NotFound(f"no listed product {data.product_id}")
        # A retry gets the first result even if the product has since been delisted.
        replay = await _stored_or_free(conn, ctx, principal, idempotency, now)
        if replay is not None:
            return replay
        if ctx["live_revision"] is None:
            raise NotFound(f"no listed product {data.product_id}")
        order_id = uuid.uuid4()
        metadata = await _metadata(conn, ctx["id"], ctx["live_revision"], ctx["revision_digest"])
        plan = next((p for p in metadata.plans if p.id == data.plan_id), None)
        mismatches = match(
            data, metadata, plan, product_state=ctx["state"],
            seller_org_id=ctx["seller_org_id"], buyer_org_id=principal.org_id,
        )  # fmt: skip
        if mismatches:
            raise _mismatch_error(mismatches)
        assert plan is not None
        paid = payment(data, plan, rule_from(ctx, "fee_"))
        price, fee = paid.price_fen, paid.fee_fen
        document, decision, cleared = await self._evaluate(
            conn, ctx, data, metadata, exported.get(ctx["seller_org_id"], (0, 0))
        )
        held = [h for h in decision.hits if h.list == "cautious" and h.rule not in cleared]
        state = placed_state(decision.decision, bool(held))
        pi = metadata.classification.personal_info
        decision_doc = {"policy": msgspec.to_builtins(decision), "cleared": cleared}
        writes = Writes()
        writes.record(
            actor, at=now, action="order.placed", subject_type="order", subject_id=order_id,
            after=data,
            detail={"state": state, "rules": [h.rule for h in decision.hits],
                    "cleared": cleared, "list_version": decision.list_version},
        )  # fmt: skip
        contract: _Contract | None = None
        if state == "rejected":
            self._order_event(
                writes, actor, "rejected", order_id, now,
                {"rules": [h.rule for h in decision.hits]},
            )  # fmt: skip
        elif state == "awaiting_signatures":
            facts = _Facts(
                order_id=order_id, product_id=ctx["id"], revision=ctx["live_revision"],
                plan=plan, terms=data, price_fen=price, fee_fen=fee, fee_bps=paid.fee_bps,
                decision=decision_doc,
                product_code=ctx["product_code"], metadata=metadata,
                revision_digest=ctx["revision_digest"],
                seller=PartyView(ctx["seller_org_id"], ctx["seller_name"], ctx["seller_uscc"]),
                buyer=PartyView(principal.org_id, ctx["buyer_name"], ctx["buyer_uscc"]),
                offer=(ctx["offer_digest"], ctx["offer_jws"])
                if ctx["offer_digest"] is not None else None,
                origin=origin_exchange(ctx["recognised_from"], ctx["origin_name"],
                                       ctx["listing_certificate"]),
            )  # fmt: skip
            buyer_key = (
                self.keyring.open(ctx["buyer_kid"], bytes(ctx["buyer_sealed"]))
                if ctx["buyer_kid"] is not None
                else None
            )
            exchange_key = (
                self.keyring.open(ctx["exchange_kid"], bytes(ctx["exchange_sealed"]))
                if ctx["exchange_kid"] is not None
                else None
            )
            contract = self._draft(writes, actor, facts, now, buyer_key, exchange_key)
            if contract.executed:
                state = ORDER.next(state, "execute")
        cross_border = decision.cross_border is not None and decision.cross_border.route != "none"
        identifiable = pi.present and pi.state != "anonymised"  # personal information
        sensitive = identifiable and pi.sensitive
        # What it adds to the seller's totals once executed: anonymised or non-personal data
        # moves no personal information abroad, whatever number of individuals it declares.
        counted = data.pi_subject_count if cross_border and identifiable else 0
        if state == "executed" and counted:  # counts for the group's next orders
            n, s = exported.get(ctx["seller_org_id"], (0, 0))
            exported[ctx["seller_org_id"]] = (n, s + counted) if sensitive else (n + counted, s)
        writes.decisions.append(DecisionRow(
            subject_type="order", subject_id=str(order_id), list_version=decision.list_version,
            list_digest=decision.list_digest, outcome=decision.decision,
            document=msgspec.to_builtins(document), decision=msgspec.to_builtins(decision),
            decided_at=now, open=not ORDER.is_final(state),
        ))  # fmt: skip
        writes.orders.append(OrderRow(
            id=order_id, buyer_org_id=principal.org_id, seller_org_id=ctx["seller_org_id"],
            product_id=ctx["id"], revision=ctx["live_revision"], plan_id=plan.id,
            terms=msgspec.to_builtins(data), state=state, cross_border=cross_border,
            sensitive_pi=sensitive, pi_subject_count=data.pi_subject_count,
            counted_pi_subjects=counted, price_fen=price,
            fee_fen=fee, decision=decision_doc, created_at=now, updated_at=now,
            executed_at=now if state == "executed" else None, fee_bps=paid.fee_bps,
        ))  # fmt: skip
        if contract is not None:
            writes.contracts.append(contract.row)
        review: Decision | None = None
        if state == "in_review":
            review = msgspec.structs.replace(
                decision, hits=held, four_eyes=any(h.four_eyes for h in held)
            )
        order = Order(
            id=order_id, state=state,
            buyer_org_id=principal.org_id, seller_org_id=ctx["seller_org_id"],
            product_id=ctx["id"], revision=ctx["live_revision"], terms=data,
            price_fen=price, fee_fen=fee, policy=decision, cleared=cleared,
            contract_id=contract.id if contract else None,
            contract_digest=contract.digest if contract else None,
            trade_id=contract.id if contract and state == "executed" else None,
            review_case_id=uuid.uuid4() if review is not None else None,
            reason=None, created_at=now, updated_at=now,
        )  # fmt: skip
        if idempotency is not None:
            writes.idempotency.append(IdempotencyRow(
                org_id=principal.org_id, key=idempotency.key, route=idempotency.route,
                request_hash=idempotency.digest, status=201,
                response=msgspec.json.encode(order), created_at=now,
            ))  # fmt: skip
        return order, writes, review

    async def _evaluate(
        self,
        conn: Connection,
        ctx: Any,
        data: OrderCreate,
        metadata: ProductMetadata,
        uncommitted: tuple[int, int] = (0, 0),
    ) -> tuple[EvaluationDocument, Decision, list[str]]:
        """The order under the list in effect, and the hits the listing review cleared.
        ``uncommitted``: the seller's exports executed earlier in the same group, not yet
        written (so not yet in `exporter_counts`)."""
        domestic = data.buyer_country == data.delivery_country == "CN"
        # The counts only route exports; a domestic order's route is "none" whatever they are.
        n, s = (0, 0) if domestic else await self.exporter_counts(conn, ctx["seller_org_id"])
        n, s = n + uncommitted[0], s + uncommitted[1]
        listing_doc = evaluation_document(metadata, legal_prohibition=ctx["legal_prohibition"])
        document = EvaluationDocument(
            product=listing_doc.product,
            order=PolicyOrder(
                buyer_country=data.buyer_country, delivery_country=data.delivery_country,
                redistribution=data.redistribution, pi_subject_count=data.pi_subject_count,
            ),
            # What staff recorded of the seller as a data exporter (route steps 2 and 3).
            exporter=Exporter(ciio=ctx["seller_ciio"], ytd_pi_subjects=n,
                              ytd_sensitive_pi_subjects=s, exemption=ctx["seller_exemption"],
                              ftz_exempt=ctx["seller_ftz_exempt"]),
        )  # fmt: skip
        if ctx["list_version"] is None:
            raise Unavailable(
                "no policy list is in effect yet: publish one (dataex policy publish)"
            )
        policy = await self.policy.compiled(conn, ctx["list_version"], ctx["list_digest"])
        decision = evaluate(document, policy)
        cleared = await self._cleared(conn, ctx, decision, policy)
        cleared += cleared_by_origin(decision.hits, ctx["origin_cleared"])  # recognised only
        return document, decision, cleared

    async def _cleared(
        self, conn: Connection, ctx: Any, decision: Decision, policy: PolicyList
    ) -> list[str]:
        """Product hits the listing review already cleared for the revision now live (or for
        one that only cosmetic revisions followed), under a rule that has not changed since.

        ``ctx`` carries the latest approved listing case up to the live revision (its rules,
        revision and list version) and how many material revisions followed it."""
        if ctx["case_rules"] is None or ctx["material_since"]:
            return []
        now = policy.document  # the list the decision was made under
        then = (
            now
            if ctx["case_list_version"] == policy.version
            else (await self.policy.get(ctx["case_list_version"], conn)).document
        )
        rules_then = {r["id"]: r for r in then["rules"]}
        rules_now = {r["id"]: r for r in now["rules"]}
        return [
            hit.rule
            for hit in decision.hits
            if hit.list == "cautious"
            and hit.scope == "product"
            and hit.rule in ctx["case_rules"]
            and rules_then.get(hit.rule) == rules_now.get(hit.rule)
        ]

    async def _close(self, conn: Connection, order_id: uuid.UUID) -> None:
        await policy_store.set_subject_open(conn, "order", str(order_id), False)

    def _order_event(
        self,
        writes: Writes,
        actor: Actor,
        event: str,
        order_id: uuid.UUID,
        at: datetime,
        data: dict[str, Any],
    ) -> None:
        writes.event(
            subject=self.settings.subject("order", event), event_type=f"dx.order.{event}",
            source=f"urn:dataex:exchange:{self.settings.exchange_code}",
            event_subject=str(order_id), data=OrderEventData(order_id=str(order_id), **data), at=at,
            actor=actor,
        )  # fmt: skip

    async def on_case_decided(
        self, conn: Connection, case: ReviewCase, verdict: str, actor: Actor, at: datetime
    ) -> None:
        row = await _one(conn, "SELECT * FROM orders WHERE id = $1 FOR UPDATE", case.subject_id)
        assert row is not None
        if not ORDER.allows(row["state"], "approve"):
            return  # cancelled while its case was open
        writes = Writes()
        if verdict == "approve":
            facts, buyer_key, exchange_key = await self._facts(conn, row["id"])
            contract = self._draft(writes, actor, facts, at, buyer_key, exchange_key)
            state = ORDER.next(row["state"], "approve_signed" if contract.executed else "approve")
            await conn.execute(
                "UPDATE orders SET state = $2, updated_at = $3, executed_at = $4 WHERE id = $1",
                row["id"], state, at, at if contract.executed else None,
            )  # fmt: skip
            writes.contracts.append(contract.row)
            if contract.executed:
                await self._close(conn, row["id"])
        else:
            await conn.execute(
                "UPDATE orders SET state = $4, reason = $2, updated_at = $3 WHERE id = $1",
                row["id"], f"review: {verdict}", at, ORDER.next(row["state"], "reject"),
            )  # fmt: skip
            await self._close(conn, row["id"])
            self._order_event(writes, actor, "rejected", row["id"], at, {"review": verdict})
        writes.record(
            actor, at=at, action=f"order.review_{verdict}", subject_type="order",
            subject_id=row["id"], detail={"case_id": str(case.id)},
        )  # fmt: skip
        await writes.flush(conn)

    # --- the contract ---------------------------------------------------------------------

    async def _facts(
        self, conn: Connection, order_id: uuid.UUID
    ) -> tuple[_Facts, SigningKey | None, SigningKey | None]:
        """What the contract of a placed order names, and the keys that sign it on drafting."""
        row = await _one(conn, _DRAFT_SQL, order_id)
        metadata = msgspec.convert(row["metadata"], ProductMetadata)
        terms = msgspec.convert(row["terms"], OrderCreate)
        facts = _Facts(
            order_id=order_id, product_id=row["product_id"], revision=row["revision"],
            plan=next(p for p in metadata.plans if p.id == row["plan_id"]), terms=terms,
            price_fen=row["price_fen"], fee_fen=row["fee_fen"], fee_bps=row["fee_bps"],
            decision=row["decision"],
            product_code=row["product_code"], metadata=metadata,
            revision_digest=row["revision_digest"],
            seller=PartyView(row["seller_org_id"], row["seller_name"], row["seller_uscc"]),
            buyer=PartyView(row["buyer_org_id"], row["buyer_name"], row["buyer_uscc"]),
            offer=(row["offer_digest"], row["offer_jws"])
            if row["offer_digest"] is not None else None,
            origin=origin_exchange(row["recognised_from"], row["origin_name"],
                                   row["listing_certificate"]),
        )  # fmt: skip
        buyer_key = await custodial_key(conn, row["buyer_org_id"], self.keyring)
        return facts, buyer_key, await self.keyring.current(conn)

    def _draft(
        self,
        writes: Writes,
        actor: Actor,
        facts: _Facts,
        at: datetime,
        buyer_key: SigningKey | None,
        exchange_key: SigningKey | None,
    ) -> _Contract:
        """Render the contract, add the signatures already given (the seller's standing offer,
        a custodial buyer's) and, when both parties have signed, countersign and execute."""
        contract_id = uuid.uuid4()
        template = templates()[facts.terms.template]
        document = contract_document(self.settings, contract_id, template, facts, at)
        digest = sha256_digest(document)
        text = render_text(template, document | {"digest": digest})
        writes.record(
            actor, at=at, action="contract.drafted", subject_type="contract",
            subject_id=contract_id, after_digest=digest, detail={"digest": digest},
        )  # fmt: skip
        if facts.offer is not None:
            writes.sign(
                contract_id, "seller", "standing_offer", jws_header(facts.offer[1])["kid"],
                facts.offer[1], at,
            )  # fmt: skip
        # A buyer that chose custodial signing signs by placing the order.
        if buyer_key is not None:
            token = buyer_key.sign_detached(digest.encode(), typ=SIGNATURE_TYPE)
            writes.sign(contract_id, "buyer", "custodial", buyer_key.kid, token, at)
            writes.record(
                actor, at=at, action="contract.signed", subject_type="contract",
                subject_id=contract_id,
                detail={"party": "buyer", "kid": buyer_key.kid, "kind": "custodial"},
            )  # fmt: skip
        executed = facts.offer is not None and buyer_key is not None
        if executed:
            if exchange_key is None:
                raise Unavailable("the exchange has no signing key yet (dataex keys rotate)")
            self._countersign(writes, actor, contract_id, digest, document, facts.order_id,
                              facts.price_fen, facts.fee_fen, exchange_key, at)  # fmt: skip
        drafted: ContractState = "awaiting_signatures"
        row = ContractRow(
            id=contract_id, order_id=facts.order_id, template=template.id, document=document,
            digest=digest, text_zh=text,
            state=CONTRACT.next(drafted, "execute") if executed else drafted, created_at=at,
            expires_at=at + timedelta(hours=self.settings.contract_ttl_hours),
            executed_at=at if executed else None,
        )  # fmt: skip
        return _Contract(contract_id, digest, executed, row)

    def _countersign(
        self,
        writes: Writes,
        actor: Actor,
        contract_id: uuid.UUID,
        digest: str,
        document: dict[str, Any],
        order_id: uuid.UUID,
        price: int,
        fee: int,
        key: SigningKey,
        at: datetime,
    ) -> None:
        """The exchange's countersignature, the executed-trade event and the audit row."""
        writes.sign(
            contract_id, "exchange", "countersignature", key.kid,
            key.sign_detached(digest.encode(), typ=SIGNATURE_TYPE), at,
        )  # fmt: skip
        writes.event(
            subject=self.settings.subject("trade", "executed"), event_type="dx.trade.executed",
            source=f"urn:dataex:exchange:{self.settings.exchange_code}",
            event_subject=str(contract_id),
            data=TradeExecutedData(
                trade_id=str(contract_id), order_id=str(order_id), contract_digest=digest,
                buyer=msgspec.convert(document["parties"]["recipient"], TradeParty),
                seller=msgspec.convert(document["parties"]["provider"], TradeParty),
                product_code=document["subject_data"]["product_code"],
                price_fen=price, fee_fen=fee,
                acceptance_days=document["acceptance_days"], executed_at=at.isoformat(),
                delivery=delivery_terms(document),
            ),
            at=at, actor=actor,
        )  # fmt: skip
        writes.record(
            actor, at=at, action="contract.executed", subject_type="contract",
            subject_id=contract_id, detail={"digest": digest},
        )  # fmt: skip

    async def contract(
        self, principal: Principal, contract_id: uuid.UUID, *, staff_may: bool = False
    ) -> dict[str, Any]:
        """A contract for its parties; with ``staff_may`` (the staff console) for staff too."""
        found = await read_contract(self.pool, contract_id)
        party = found is not None and principal.org_id in found[1]
        if found is None or not (party or (staff_may and principal.has(*STAFF))):
            raise NotFound(f"no contract {contract_id}")
        return found[0]

    async def sign(
        self,
        actor: Actor,
        principal: Principal,
        contract_id: uuid.UUID,
        token: str | None,
        *,
        custodial: bool = False,
    ) -> dict[str, Any]:
        """A party's detached JWS over the contract digest (or, with ``custodial``, the
        exchange signs with the key it holds for the party); the last one executes the trade."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(_CONTRACT_SQL + " FOR UPDATE OF c, o", contract_id)
            if row is None or principal.org_id not in (row["buyer_org_id"], row["seller_org_id"]):
                raise NotFound(f"no contract {contract_id}")
            if row["state"] == "awaiting_signatures" and row["expires_at"] <= now:
                await self._expire(conn, actor, row, now)
                row = await _one(conn, _CONTRACT_SQL, contract_id)
            CONTRACT.next(row["state"], "sign")
            party = "buyer" if principal.org_id == row["buyer_org_id"] else "seller"
            if not principal.has(party):
                raise Forbidden(f"signing as the {party} needs the {party} role")
            # The contract row is locked: the parties seen here are all that have signed.
            signed = {
                r["party"]
                for r in await conn.fetch(
                    "SELECT party FROM contract_signatures WHERE contract_id = $1", contract_id
                )
            }
            if party in signed:
                raise Conflict(f"the {party} has already signed this contract")
            if custodial:
                key = await custodial_key(conn, principal.org_id, self.keyring)
                if key is None:
                    raise InvalidInput(
                        "the organisation has no custodial key (POST /v1/keys/custodial to opt in)"
                    )
                token, kid, kind = (
                    key.sign_detached(row["digest"].encode(), typ=SIGNATURE_TYPE),
                    key.kid,
                    "custodial",
                )
            else:
                assert token is not None
                kid = await verify_detached(conn, principal.org_id, token, row["digest"].encode())
                kind = "signature"
            writes = Writes()
            writes.sign(contract_id, party, kind, kid, token, now)
            writes.record(
                actor, at=now, action="contract.signed", subject_type="contract",
                subject_id=contract_id, detail={"party": party, "kid": kid, "kind": kind},
            )  # fmt: skip
            if {"buyer", "seller"} <= signed | {party}:
                order = await _one(conn,
                    "UPDATE orders SET state = $3, executed_at = $2, updated_at = $2"
                    " WHERE id = $1 RETURNING price_fen, fee_fen",
                    row["order_id"], now, ORDER.next(row["order_state"], "execute"),
                )  # fmt: skip
                await conn.execute(
                    "UPDATE trade_contracts SET state = $3, executed_at = $2 WHERE id = $1",
                    contract_id, now, CONTRACT.next(row["state"], "execute"),
                )  # fmt: skip
                await self._close(conn, row["order_id"])
                self._countersign(
                    writes, actor, contract_id, row["digest"], row["document"], row["order_id"],
                    order["price_fen"], order["fee_fen"], await self.keyring.current(conn), now,
                )  # fmt: skip
            await writes.flush(conn)
        return await self.contract(principal, contract_id)

    async def _expire(self, conn: Connection, actor: Actor, contract: Any, at: datetime) -> None:
        await conn.execute(
            "UPDATE trade_contracts SET state = $2 WHERE id = $1",
            contract["id"], CONTRACT.next(contract["state"], "expire"),
        )  # fmt: skip
        await conn.execute(
            "UPDATE orders SET state = $3, updated_at = $2 WHERE id = $1",
            contract["order_id"], at, ORDER.next(contract["order_state"], "expire"),
        )  # fmt: skip
        await self._close(conn, contract["order_id"])
        writes = Writes()
        self._order_event(
            writes, actor, "expired", contract["order_id"], at,
            {"reason": "contract not signed in time"},
        )  # fmt: skip
        writes.record(
            actor, at=at, action="contract.expired", subject_type="contract",
            subject_id=contract["id"], detail={"expires_at": contract["expires_at"].isoformat()},
        )  # fmt: skip
        await writes.flush(conn)

    async def expire_due(self, actor: Actor, limit: int = 500) -> int:
        """Expire contracts left unsigned past their deadline; returns how many."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT c.*, o.buyer_org_id, o.seller_org_id, o.state AS order_state"
                " FROM trade_contracts c JOIN orders o ON o.id = c.order_id"
                " WHERE c.state = 'awaiting_signatures'"
                " AND c.expires_at <= $1 ORDER BY c.expires_at LIMIT $2"
                " FOR UPDATE OF c, o SKIP LOCKED",
                now, limit,
            )  # fmt: skip
            for row in rows:
                await self._expire(conn, actor, row, now)
        return len(rows)

    async def mark_unfunded(self, conn: Connection, contract_ids: Sequence[uuid.UUID]) -> None:
        """Settlement could not reserve the buyer's payment for these executed trades (their
        contract ids): the contracts are void, and since nothing was delivered their exports
        no longer count. Called by the settlement room through the composition root, in the
        settlement's transaction."""
        await conn.execute(
            "UPDATE trade_contracts SET state = $2 WHERE id = ANY($1::uuid[]) AND state = $3",
            list(contract_ids), CONTRACT.next("executed", "unfund"), "executed",
        )  # fmt: skip
        await self.uncount_exports(conn, contract_ids, "failed")

    async def uncount_exports(
        self,
        conn: Connection,
        contract_ids: Sequence[uuid.UUID],
        outcome: Literal["voided", "failed"],
    ) -> int:
        """These trades (contract ids) ended ``outcome`` (``voided``, ``failed``) before any
        delivery: no personal information left China under them, so their individuals leave
        the sellers' cross-border totals for the year. Called through the composition root in
        the transaction that ends the trades (settlement's, or the delivery room's for a
        metered trade released unused). Returns how many orders stopped counting; a trade
        already uncounted, or that never counted, changes nothing."""
        if not contract_ids:
            return 0
        now = self.clock.now()
        rows = await conn.fetch(
            "WITH ended AS (SELECT o.id, c.id AS contract_id, o.counted_pi_subjects,"
            " o.sensitive_pi FROM orders o JOIN trade_contracts c ON c.order_id = o.id"
            " WHERE c.id = ANY($1::uuid[]) AND o.counted_pi_subjects > 0 FOR UPDATE OF o)"
            " UPDATE orders SET counted_pi_subjects = 0, updated_at = $2 FROM ended"
            " WHERE orders.id = ended.id"
            " RETURNING ended.id, ended.contract_id, ended.counted_pi_subjects,"
            " ended.sensitive_pi",
            list(contract_ids), now,
        )  # fmt: skip
        writes = Writes()
        actor = Actor(label="system:settlement")
        for row in rows:
            writes.record(
                actor, at=now, action="order.export_uncounted", subject_type="order",
                subject_id=row["id"],
                detail={"trade": outcome, "trade_id": str(row["contract_id"]),
                        "subjects": row["counted_pi_subjects"], "sensitive": row["sensitive_pi"]},
            )  # fmt: skip
        await writes.flush(conn)
        return len(rows)

    async def cancel(
        self, actor: Actor, principal: Principal, order_id: uuid.UUID, reason: str
    ) -> Order:
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._party_row(conn, principal, order_id, lock=True)
            if row["buyer_org_id"] != principal.org_id:
                raise NotFound(f"no order {order_id}")
            await conn.execute(
                "UPDATE orders SET state = $4, reason = $2, updated_at = $3 WHERE id = $1",
                order_id, reason, now, ORDER.next(row["state"], "cancel"),
            )  # fmt: skip
            # An order awaiting signatures has its contract drafted; one in review has none.
            await conn.execute(
                "UPDATE trade_contracts SET state = $2 WHERE order_id = $1 AND state = $3",
                order_id, CONTRACT.next("awaiting_signatures", "cancel"), "awaiting_signatures",
            )  # fmt: skip
            await withdraw_open_cases(conn, "order", order_id, now)
            await self._close(conn, order_id)
            writes = Writes()
            self._order_event(writes, actor, "cancelled", order_id, now, {"reason": reason})
            writes.record(
                actor, at=now, action="order.cancelled", subject_type="order",
                subject_id=order_id, detail={"reason": reason},
            )  # fmt: skip
            await writes.flush(conn)
            return await self._view(conn, await conn.fetchrow(
                "SELECT * FROM orders WHERE id = $1", order_id))  # fmt: skip

    # --- standing offers ------------------------------------------------------------------

    async def offer(
        self, principal: Principal, product_id: uuid.UUID, plan_id: str
    ) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            return await self._offer(conn, principal, product_id, plan_id)

    async def _offer(
        self, conn: Executor, principal: Principal, product_id: uuid.UUID, plan_id: str
    ) -> dict[str, Any]:
        product = await conn.fetchrow("SELECT * FROM products WHERE id = $1", product_id)
        if product is None or product["seller_org_id"] != principal.org_id:
            raise NotFound(f"no product {product_id}")
        if product["state"] != "listed":
            raise Conflict(f"the product is {product['state']}; offers are made on listed products")
        revision = await fetch_revision(conn, product_id, product["live_revision"])
        metadata = revision.metadata
        if plan_id not in {p.id for p in metadata.plans}:
            raise NotFound(f"no plan {plan_id!r} in the live revision")
        seller = await identity_repo.get_organisation(conn, principal.org_id)
        assert seller is not None
        terms = offer_terms(
            product["product_code"],
            revision.number,
            revision.digest,
            metadata,
            plan_id,
            seller.uscc,
        )
        return {
            "revision": revision.number,
            "terms": terms,
            "canonical": canonical_json(terms).decode(),
            "digest": sha256_digest(terms),
        }

    async def make_standing_offer(
        self, actor: Actor, principal: Principal, product_id: uuid.UUID, plan_id: str, token: str
    ) -> dict[str, Any]:
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            offer = await self._offer(conn, principal, product_id, plan_id)
            await verify_detached(conn, principal.org_id, token, offer["canonical"].encode())
            await conn.execute(
                "INSERT INTO standing_offers (id, product_id, revision, plan_id, offer,"
                " offer_digest, jws, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                " ON CONFLICT (product_id, revision, plan_id) DO NOTHING",
                uuid.uuid4(), product_id, offer["revision"], plan_id, offer["terms"],
                offer["digest"], token, now,
            )  # fmt: skip
            await record(
                conn,
                actor,
                at=now,
                action="offer.standing",
                subject_type="product",
                subject_id=product_id,
                detail={"plan_id": plan_id, "digest": offer["digest"]},
            )
        return offer | {"jws": token}


async def read_contract(
    conn: Executor, contract_id: uuid.UUID
) -> tuple[dict[str, Any], tuple[uuid.UUID, uuid.UUID]] | None:
    """A contract as ``GET /v1/contracts/{id}`` shows it (the document as stored, its digest,
    the Chinese text, the standing offer that signed for the seller, every signature), and its
    (buyer, seller) organisations; None when there is no such contract."""
    row = await conn.fetchrow(
        "SELECT c.*, o.buyer_org_id, o.seller_org_id FROM trade_contracts c"
        " JOIN orders o ON o.id = c.order_id WHERE c.id = $1",
        contract_id,
    )
    if row is None:
        return None
    signatures = await conn.fetch(
        "SELECT party, kind, kid, jws, signed_at FROM contract_signatures"
        " WHERE contract_id = $1 ORDER BY signed_at, party",
        contract_id,
    )
    offer = await conn.fetchrow(
        "SELECT s.offer FROM standing_offers s JOIN orders o ON o.product_id = s.product_id"
        " AND o.revision = s.revision AND o.plan_id = s.plan_id WHERE o.id = $1",
        row["order_id"],
    )
    view = {
        "id": str(row["id"]),
        "order_id": str(row["order_id"]),
        "state": row["state"],
        "digest": row["digest"],
        "document": row["document"],
        "text_zh": row["text_zh"],
        "standing_offer": offer["offer"] if offer else None,
        "signatures": [dict(s) | {"signed_at": s["signed_at"].isoformat()} for s in signatures],
        "executed_at": row["executed_at"].isoformat() if row["executed_at"] else None,
    }
    return view, (row["buyer_org_id"], row["seller_org_id"])


def delivery_terms(document: dict[str, Any]) -> DeliveryTerms | None:
    """What the delivery room needs of an executed contract, from its document (None for a
    contract drafted before documents named their delivery terms)."""
    terms = document.get("delivery_terms")
    if terms is None:
        return None
    usage = document["usage"]
    return msgspec.convert(
        {"product_id": terms["product_id"], "revision": document["subject_data"]["revision"],
         "revision_digest": document["subject_data"]["revision_digest"],
         "plan_id": terms["plan_id"], "pricing": terms["pricing"], "modes": document["delivery"],
         "purpose": usage["purpose"], "territory": usage["territory"],
         "term_days": usage["term_days"], "dimensions": terms["dimensions"],
         "spend_cap_fen": terms["spend_cap_fen"], "fee_bps": terms["fee_bps"]},
        DeliveryTerms,
    )  # fmt: skip


async def _one(conn: Executor, query: str, *args: object) -> asyncpg.Record:
    """A row that must exist (the transaction holds what refers to it)."""
    row = await conn.fetchrow(query, *args)
    if row is None:
        raise RuntimeError(f"expected a row: {query.split(' WHERE ', maxsplit=1)[0]}")
    return row
