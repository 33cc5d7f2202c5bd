"""Orders to executed contracts: matching, policy at order time, drafting, signing, execution.

Every state change, its audit row and its outbox event commit in one transaction.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from contracts.agreements.origin import cleared_at_origin, origin_terms
from contracts.agreements.signatures import custodial_key, verify_detached
from contracts.agreements.templates import render_text, templates
from contracts.orders.events import OrderEventData, TradeExecutedData, TradeParty
from contracts.orders.fees import fee_fen, rule_for
from contracts.orders.matching import match, price_fen
from contracts.orders.schemas import Order, OrderCreate
from contracts.outbox import enqueue
from contracts.policy.attributes import EvaluationDocument, Exporter
from contracts.policy.attributes import Order as PolicyOrder
from contracts.policy.evaluator import evaluate
from contracts.policy.routing import counting_year_start
from contracts.policy.rules import PolicyList
from contracts.policy.schemas import Decision
from contracts.policy.service import PolicyService
from exchange.audit import Actor, record
from exchange.identity import repository as identity_repo
from exchange.listings.lifecycle import evaluation_document
from exchange.listings.schemas import ProductMetadata
from exchange.listings.service import fetch_revision
from exchange.platform.auth import Principal
from exchange.platform.canonical import canonical_json, sha256_digest
from exchange.platform.clock import Clock
from exchange.platform.db import Connection, Executor
from exchange.platform.errors import Conflict, FieldError, Forbidden, InvalidInput, NotFound
from exchange.platform.settings import Settings
from exchange.platform.signing import KeyRing, jws_header
from exchange.review.schemas import ReviewCase
from exchange.review.service import open_case

SIGNATURE_TYPE = "dataex-contract-signature+jws"
_DRAFT_SQL = """
SELECT o.*, p.product_code, r.metadata, r.digest AS revision_digest,
       s.name AS seller_name, s.uscc AS seller_uscc, b.name AS buyer_name, b.uscc AS buyer_uscc,
       so.offer_digest, so.jws AS offer_jws
FROM orders o
JOIN products p ON p.id = o.product_id
JOIN product_revisions r ON r.product_id = o.product_id AND r.number = o.revision
JOIN organisations s ON s.id = o.seller_org_id
JOIN organisations b ON b.id = o.buyer_org_id
LEFT JOIN standing_offers so
       ON so.product_id = o.product_id AND so.revision = o.revision AND so.plan_id = o.plan_id
WHERE o.id = $1
"""
_CONTRACT_SQL = (
    "SELECT c.*, o.buyer_org_id, o.seller_org_id FROM trade_contracts c"
    " JOIN orders o ON o.id = c.order_id WHERE c.id = $1"
)
STAFF = ("reviewer", "admin")


@dataclass(frozen=True, slots=True)
class PartyView:
    id: uuid.UUID
    name: str
    uscc: str | None


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
        self, pool: asyncpg.Pool, clock: Clock, settings: Settings, keyring: KeyRing
    ) -> None:
        self.pool = pool
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
            policy=decision["policy"],
            cleared=decision["cleared"],
            contract_id=contract["id"] if contract else None,
            contract_digest=contract["digest"] if contract else None,
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

    # --- placing ------------------------------------------------------------------------

    async def exporter_counts(self, conn: Executor, seller_org_id: uuid.UUID) -> tuple[int, int]:
        """Individuals whose personal information the seller exported this year, from its
        executed cross-border trades: (non-sensitive, sensitive)."""
        row = await _one(conn,
            "SELECT coalesce(sum(pi_subject_count) FILTER (WHERE NOT sensitive_pi), 0) AS n,"
            "       coalesce(sum(pi_subject_count) FILTER (WHERE sensitive_pi), 0) AS s"
            " FROM orders WHERE seller_org_id = $1 AND state = 'executed' AND cross_border"
            " AND executed_at >= $2",
            seller_org_id, counting_year_start(self.clock.now()),
        )  # fmt: skip
        assert row is not None
        return int(row["n"]), int(row["s"])

    async def place(
        self, actor: Actor, principal: Principal, data: OrderCreate, finalize: Any
    ) -> Order:
        """Place an order. ``finalize(conn, order)`` runs inside the transaction (idempotency)."""
        now = self.clock.now()
        order_id = uuid.uuid4()
        async with self.pool.acquire() as conn, conn.transaction():
            product = await _one(
                conn, "SELECT * FROM products WHERE id = $1 FOR SHARE", data.product_id
            )
            if product is None or product["live_revision"] is None:
                raise NotFound(f"no listed product {data.product_id}")
            revision = await fetch_revision(conn, product["id"], product["live_revision"])
            metadata = revision.metadata
            plan = next((p for p in metadata.plans if p.id == data.plan_id), None)
            mismatches = match(
                data, metadata, plan, product_state=product["state"],
                seller_org_id=product["seller_org_id"], buyer_org_id=principal.org_id,
            )  # fmt: skip
            if mismatches:
                raise InvalidInput(
                    "the order does not match the offer: "
                    + "; ".join(
                        f"{m.term}: asked {m.asked!r}, offered {m.offered!r}" for m in mismatches
                    ),
                    errors=[
                        FieldError(
                            path=m.term,
                            message=f"asked {m.asked!r}, offered {m.offered!r}",
                            source="body",
                        )
                        for m in mismatches
                    ],
                    extensions={"mismatches": msgspec.to_builtins(mismatches)},
                )
            assert plan is not None
            domestic = data.buyer_country == data.delivery_country == "CN"
            # The counts only route exports; a domestic order's route is "none" whatever they are.
            n, s = (
                (0, 0) if domestic else await self.exporter_counts(conn, product["seller_org_id"])
            )
            listing_doc = evaluation_document(
                metadata, legal_prohibition=product["legal_prohibition"]
            )
            document = EvaluationDocument(
                product=listing_doc.product,
                order=PolicyOrder(
                    buyer_country=data.buyer_country, delivery_country=data.delivery_country,
                    redistribution=data.redistribution, pi_subject_count=data.pi_subject_count,
                ),
                exporter=Exporter(ciio=False, ytd_pi_subjects=n, ytd_sensitive_pi_subjects=s,
                                  exemption=None, ftz_exempt=False),
            )  # fmt: skip
            policy = await self.policy.current(conn)
            decision = evaluate(document, policy)
            await self.policy.record(
                conn,
                subject_type="order",
                subject_id=str(order_id),
                document=document,
                decision=decision,
            )
            cleared = await self._cleared(conn, product, decision, policy)
            cleared += await cleared_at_origin(conn, product, decision.hits)  # recognised only
            held = [h for h in decision.hits if h.list == "cautious" and h.rule not in cleared]
            state = (
                "rejected" if decision.decision == "reject"
                else "in_review" if held
                else "awaiting_signatures"
            )  # fmt: skip
            price = price_fen(plan, data.quantity)
            fee = fee_fen(price, await rule_for(conn, product["id"], plan.id, now)) if price else 0
            pi = metadata.classification.personal_info
            await conn.execute(
                """
                INSERT INTO orders (id, buyer_org_id, seller_org_id, product_id, revision, plan_id,
                    terms, state, cross_border, sensitive_pi, pi_subject_count, price_fen, fee_fen,
                    decision, created_at, updated_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15)
                """,
                order_id, principal.org_id, product["seller_org_id"], product["id"],
                product["live_revision"], plan.id, msgspec.to_builtins(data), state,
                decision.cross_border is not None and decision.cross_border.route != "none",
                pi.present and pi.sensitive and pi.state != "anonymised",
                data.pi_subject_count, price, fee,
                {"policy": msgspec.to_builtins(decision), "cleared": cleared}, now,
            )  # fmt: skip
            await record(
                conn,
                actor,
                at=now,
                action="order.placed",
                subject_type="order",
                subject_id=order_id,
                after=data,
                detail={
                    "state": state,
                    "rules": [h.rule for h in decision.hits],
                    "cleared": cleared,
                    "list_version": decision.list_version,
                },
            )
            if state == "rejected":
                await self._close(conn, order_id)
                await self._order_event(
                    conn,
                    actor,
                    "rejected",
                    order_id,
                    now,
                    {"rules": [h.rule for h in decision.hits]},
                )
            elif state == "in_review":
                review = msgspec.structs.replace(
                    decision, hits=held, four_eyes=any(h.four_eyes for h in held)
                )
                await open_case(
                    conn,
                    kind="order",
                    subject_id=order_id,
                    subject_org_id=principal.org_id,
                    revision=product["live_revision"],
                    decision=review,
                    policy_decision_id=None,
                    at=now,
                )
            else:
                await self._draft_contract(conn, actor, order_id, now)
            order = await self._view(conn, await conn.fetchrow(
                "SELECT * FROM orders WHERE id = $1", order_id))  # fmt: skip
            await finalize(conn, order)
            return order

    async def _cleared(
        self, conn: Connection, product: Any, decision: Decision, policy: PolicyList
    ) -> list[str]:
        """Product hits the listing review already cleared for the revision now live (or for
        one that only cosmetic revisions followed), under a rule that has not changed since."""
        case = await conn.fetchrow(
            "SELECT c.rules, c.revision, d.list_version FROM review_cases c"
            " JOIN policy_decisions d ON d.id = c.policy_decision_id"
            " WHERE c.kind = 'listing' AND c.subject_id = $1 AND c.state = 'approved'"
            " AND c.revision <= $2 ORDER BY c.revision DESC LIMIT 1",
            product["id"], product["live_revision"],
        )  # fmt: skip
        if case is None:
            return []
        material_since = await conn.fetchval(
            "SELECT count(*) FROM product_revisions WHERE product_id = $1 AND number > $2"
            " AND number <= $3 AND change <> 'cosmetic'",
            product["id"], case["revision"], product["live_revision"],
        )  # fmt: skip
        if material_since:
            return []
        now = policy.document  # the list the decision was made under
        then = (
            now
            if case["list_version"] == policy.version
            else (await self.policy.get(case["list_version"], conn)).document
        )
        rules_then = {r["id"]: r for r in then["rules"]}
        rules_now = {r["id"]: r for r in now["rules"]}
        return [
            hit.rule
            for hit in decision.hits
            if hit.list == "cautious"
            and hit.scope == "product"
            and hit.rule in case["rules"]
            and rules_then.get(hit.rule) == rules_now.get(hit.rule)
        ]

    async def _close(self, conn: Connection, order_id: uuid.UUID) -> None:
        await conn.execute(
            "UPDATE policy_subjects SET open = false WHERE subject_type = 'order'"
            " AND subject_id = $1",
            str(order_id),
        )

    async def _order_event(
        self,
        conn: Connection,
        actor: Actor,
        event: str,
        order_id: uuid.UUID,
        at: datetime,
        data: dict[str, Any],
    ) -> None:
        await enqueue(
            conn, subject=self.settings.subject("order", event), event_type=f"dx.order.{event}",
            source=f"urn:dataex:exchange:{self.settings.exchange_code}",
            event_subject=str(order_id), data=OrderEventData(order_id=str(order_id), **data), at=at,
            request_id=actor.request_id,
        )  # fmt: skip

    async def on_case_decided(
        self, conn: Connection, case: ReviewCase, verdict: str, actor: Actor, at: datetime
    ) -> None:
        row = await _one(conn, "SELECT * FROM orders WHERE id = $1 FOR UPDATE", case.subject_id)
        assert row is not None
        if row["state"] != "in_review":
            return
        if verdict == "approve":
            await conn.execute(
                "UPDATE orders SET state = 'awaiting_signatures', updated_at = $2 WHERE id = $1",
                row["id"], at,
            )  # fmt: skip
            await self._draft_contract(conn, actor, row["id"], at)
        else:
            await conn.execute(
                "UPDATE orders SET state = 'rejected', reason = $2, updated_at = $3 WHERE id = $1",
                row["id"], f"review: {verdict}", at,
            )  # fmt: skip
            await self._close(conn, row["id"])
            await self._order_event(conn, actor, "rejected", row["id"], at, {"review": verdict})
        await record(
            conn,
            actor,
            at=at,
            action=f"order.review_{verdict}",
            subject_type="order",
            subject_id=row["id"],
            detail={"case_id": str(case.id)},
        )

    # --- the contract ---------------------------------------------------------------------

    async def _draft_contract(
        self, conn: Connection, actor: Actor, order_id: uuid.UUID, at: datetime
    ) -> uuid.UUID:
        # Everything the contract names, in one round trip.
        row = await _one(conn, _DRAFT_SQL, order_id)
        metadata = msgspec.convert(row["metadata"], ProductMetadata)
        plan = next(p for p in metadata.plans if p.id == row["plan_id"])
        terms = msgspec.convert(row["terms"], OrderCreate)
        seller = PartyView(row["seller_org_id"], row["seller_name"], row["seller_uscc"])
        buyer = PartyView(row["buyer_org_id"], row["buyer_name"], row["buyer_uscc"])
        template = templates()[terms.template]
        offer = (
            {"offer_digest": row["offer_digest"], "jws": row["offer_jws"]}
            if row["offer_digest"] is not None
            else None
        )
        policy = row["decision"]["policy"]
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
            "product_name": metadata.name_zh, "product_code": row["product_code"],
            "revision": str(row["revision"]), "revision_digest": row["revision_digest"],
            "scale": ", ".join(f"{k}={v}" for k, v in msgspec.to_builtins(metadata.manual.scale)
                               .items() if v is not None),
            "source": metadata.source.kind, "rights": "、".join(granted),
            "purpose": terms.purpose, "territory": "、".join(terms.territory),
            "term_days": str(terms.term_days),
            "redistribution": "允许再分发" if terms.redistribution else "不得转售或再分发",
            "delivery": "、".join(metadata.delivery),
            "price_yuan": f"{row['price_fen'] / 100:.2f}", "price_fen": str(row["price_fen"]),
            "pricing": plan.pricing, "quantity": str(terms.quantity),
            "fee_fen": str(row["fee_fen"]), "acceptance_days": str(plan.acceptance_days),
            "policy_summary": f"{policy['decision']}(清单 {policy['list_version']})",
            "exchange_name": self.settings.exchange_name,
        }  # fmt: skip
        contract_id = uuid.uuid4()
        document = {
            "contract_id": str(contract_id),
            "order_id": str(order_id),
            "template": {"id": template.id, "version": template.version,
                         "title_zh": template.title_zh},
            "exchange": {"code": self.settings.exchange_code, "name": self.settings.exchange_name},
            "parties": {
                "provider": {"org_id": str(seller.id), "name": seller.name, "uscc": seller.uscc},
                "recipient": {"org_id": str(buyer.id), "name": buyer.name, "uscc": buyer.uscc},
            },
            "subject_data": {
                "product_code": row["product_code"], "name_zh": metadata.name_zh,
                "revision": row["revision"], "revision_digest": row["revision_digest"],
            },
            "rights": msgspec.to_builtins(rights),
            "usage": {"purpose": terms.purpose, "territory": list(terms.territory),
                      "term_days": terms.term_days, "redistribution": terms.redistribution},
            "delivery": list(metadata.delivery),
            "acceptance_days": plan.acceptance_days,
            "fees": {"pricing": plan.pricing, "quantity": terms.quantity,
                     "price_fen": row["price_fen"], "fee_fen": row["fee_fen"], "currency": "CNY"},
            "policy": {"decision": policy["decision"], "list_version": policy["list_version"],
                       "list_digest": policy["list_digest"],
                       "route": (policy.get("cross_border") or {}).get("route"),
                       "cleared": row["decision"]["cleared"]},
            "seller_acceptance": (
                {"standing_offer_digest": offer["offer_digest"]} if offer else None
            ),
            "clauses": template.render_clauses(values),
            "created_at": at.isoformat(),
        }  # fmt: skip
        document |= await origin_terms(conn, row["product_code"], self.settings.exchange_code)
        digest = sha256_digest(document)
        text = render_text(template, document | {"digest": digest})
        await conn.execute(
            "INSERT INTO trade_contracts (id, order_id, template, document, digest, text_zh, state,"
            " created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, 'awaiting_signatures', $7,"
            " $8)",
            contract_id, order_id, template.id, document, digest, text, at,
            at + timedelta(hours=self.settings.contract_ttl_hours),
        )  # fmt: skip
        if offer is not None:
            await conn.execute(
                "INSERT INTO contract_signatures (contract_id, party, kind, kid, jws, signed_at)"
                " VALUES ($1, 'seller', 'standing_offer', $2, $3, $4)",
                contract_id, jws_header(offer["jws"])["kid"], offer["jws"], at,
            )  # fmt: skip
        await record(
            conn,
            actor,
            at=at,
            action="contract.drafted",
            subject_type="contract",
            subject_id=contract_id,
            after_digest=digest,
            detail={"digest": digest},
        )
        # A buyer that chose custodial signing signs by placing the order.
        buyer_key = await custodial_key(conn, row["buyer_org_id"], self.keyring)
        if buyer_key is not None:
            contract = await _one(conn, _CONTRACT_SQL, contract_id)
            token = buyer_key.sign_detached(digest.encode(), typ=SIGNATURE_TYPE)
            await self._add_signature(
                conn, actor, contract, "buyer", "custodial", buyer_key.kid, token, at
            )
        return contract_id

    async def contract(self, principal: Principal, contract_id: uuid.UUID) -> dict[str, Any]:
        row = await self.pool.fetchrow(
            "SELECT c.*, o.buyer_org_id, o.seller_org_id FROM trade_contracts c"
            " JOIN orders o ON o.id = c.order_id WHERE c.id = $1",
            contract_id,
        )
        if row is None or principal.org_id not in (row["buyer_org_id"], row["seller_org_id"]):
            raise NotFound(f"no contract {contract_id}")
        signatures = await self.pool.fetch(
            "SELECT party, kind, kid, jws, signed_at FROM contract_signatures"
            " WHERE contract_id = $1 ORDER BY signed_at, party",
            contract_id,
        )
        offer = await self.pool.fetchrow(
            "SELECT s.offer FROM standing_offers s JOIN orders o ON o.product_id = s.product_id"
            " AND o.revision = s.revision AND o.plan_id = s.plan_id WHERE o.id = $1",
            row["order_id"],
        )
        return {
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
            if row["state"] != "awaiting_signatures":
                raise Conflict(
                    f"the contract is {row['state']}; nothing to sign",
                    extensions={"state": row["state"]},
                )
            party = "buyer" if principal.org_id == row["buyer_org_id"] else "seller"
            if not principal.has(party):
                raise Forbidden(f"signing as the {party} needs the {party} role")
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
            await self._add_signature(conn, actor, row, party, kind, kid, token, now)
        return await self.contract(principal, contract_id)

    async def _add_signature(
        self,
        conn: Connection,
        actor: Actor,
        contract: Any,
        party: str,
        kind: str,
        kid: str,
        token: str,
        at: datetime,
    ) -> None:
        inserted = await conn.fetchval(
            "INSERT INTO contract_signatures (contract_id, party, kind, kid, jws, signed_at)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING true",
            contract["id"], party, kind, kid, token, at,
        )  # fmt: skip
        if not inserted:
            raise Conflict(f"the {party} has already signed this contract")
        await record(
            conn,
            actor,
            at=at,
            action="contract.signed",
            subject_type="contract",
            subject_id=contract["id"],
            detail={"party": party, "kid": kid, "kind": kind},
        )
        parties = {
            r["party"]
            for r in await conn.fetch(
                "SELECT party FROM contract_signatures WHERE contract_id = $1", contract["id"]
            )
        }
        if {"buyer", "seller"} <= parties:
            await self._execute(conn, actor, contract, at)

    async def _expire(self, conn: Connection, actor: Actor, contract: Any, at: datetime) -> None:
        await conn.execute(
            "UPDATE trade_contracts SET state = 'expired' WHERE id = $1", contract["id"]
        )
        await conn.execute(
            "UPDATE orders SET state = 'expired', updated_at = $2 WHERE id = $1",
            contract["order_id"], at,
        )  # fmt: skip
        await self._close(conn, contract["order_id"])
        await self._order_event(
            conn,
            actor,
            "expired",
            contract["order_id"],
            at,
            {"reason": "contract not signed in time"},
        )
        await record(
            conn,
            actor,
            at=at,
            action="contract.expired",
            subject_type="contract",
            subject_id=contract["id"],
            detail={"expires_at": contract["expires_at"].isoformat()},
        )

    async def expire_due(self, actor: Actor, limit: int = 500) -> int:
        """Expire contracts left unsigned past their deadline; returns how many."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "SELECT c.*, o.buyer_org_id, o.seller_org_id FROM trade_contracts c"
                " JOIN orders o ON o.id = c.order_id WHERE c.state = 'awaiting_signatures'"
                " AND c.expires_at <= $1 ORDER BY c.expires_at LIMIT $2"
                " FOR UPDATE OF c, o SKIP LOCKED",
                now, limit,
            )  # fmt: skip
            for row in rows:
                await self._expire(conn, actor, row, now)
        return len(rows)

    async def _execute(self, conn: Connection, actor: Actor, contract: Any, at: datetime) -> None:
        key = await self.keyring.current(conn)
        countersignature = key.sign_detached(contract["digest"].encode(), typ=SIGNATURE_TYPE)
        await conn.execute(
            "INSERT INTO contract_signatures (contract_id, party, kind, kid, jws, signed_at)"
            " VALUES ($1, 'exchange', 'countersignature', $2, $3, $4)",
            contract["id"], key.kid, countersignature, at,
        )  # fmt: skip
        await conn.execute(
            "UPDATE trade_contracts SET state = 'executed', executed_at = $2 WHERE id = $1",
            contract["id"], at,
        )  # fmt: skip
        order = await _one(conn,
            "UPDATE orders SET state = 'executed', executed_at = $2, updated_at = $2"
            " WHERE id = $1 RETURNING *",
            contract["order_id"], at,
        )  # fmt: skip
        await self._close(conn, order["id"])
        document = contract["document"]
        await enqueue(
            conn, subject=self.settings.subject("trade", "executed"),
            event_type="dx.trade.executed",
            source=f"urn:dataex:exchange:{self.settings.exchange_code}",
            event_subject=str(contract["id"]),
            data=TradeExecutedData(
                trade_id=str(contract["id"]), order_id=str(order["id"]),
                contract_digest=contract["digest"],
                buyer=msgspec.convert(document["parties"]["recipient"], TradeParty),
                seller=msgspec.convert(document["parties"]["provider"], TradeParty),
                product_code=document["subject_data"]["product_code"],
                price_fen=order["price_fen"], fee_fen=order["fee_fen"],
                acceptance_days=document["acceptance_days"], executed_at=at.isoformat(),
            ),
            at=at, request_id=actor.request_id,
        )  # fmt: skip
        await record(
            conn,
            actor,
            at=at,
            action="contract.executed",
            subject_type="contract",
            subject_id=contract["id"],
            detail={"digest": contract["digest"]},
        )

    async def cancel(
        self, actor: Actor, principal: Principal, order_id: uuid.UUID, reason: str
    ) -> Order:
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._party_row(conn, principal, order_id, lock=True)
            if row["buyer_org_id"] != principal.org_id:
                raise NotFound(f"no order {order_id}")
            if row["state"] not in ("in_review", "awaiting_signatures"):
                raise Conflict(
                    f"cannot cancel an order that is {row['state']}; allowed while in_review or"
                    " awaiting_signatures",
                    extensions={"state": row["state"]},
                )
            await conn.execute(
                "UPDATE orders SET state = 'cancelled', reason = $2, updated_at = $3 WHERE id = $1",
                order_id, reason, now,
            )  # fmt: skip
            await conn.execute(
                "UPDATE trade_contracts SET state = 'cancelled' WHERE order_id = $1", order_id
            )
            await conn.execute(
                "UPDATE review_cases SET state = 'rejected', closed_at = $2"
                " WHERE kind = 'order' AND subject_id = $1 AND state = 'open'",
                order_id, now,
            )  # fmt: skip
            await self._close(conn, order_id)
            await self._order_event(conn, actor, "cancelled", order_id, now, {"reason": reason})
            await record(
                conn,
                actor,
                at=now,
                action="order.cancelled",
                subject_type="order",
                subject_id=order_id,
                detail={"reason": reason},
            )
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


async def _one(conn: Executor, query: str, *args: object) -> asyncpg.Record:
    """A row that must exist (the transaction holds what refers to it)."""
    row = await conn.fetchrow(query, *args)
    if row is None:
        raise RuntimeError(f"expected a row: {query.split(' WHERE ', maxsplit=1)[0]}")
    return row
