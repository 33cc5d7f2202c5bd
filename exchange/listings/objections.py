"""Objections to a registration (异议登记): a third party claims rights in a listed product.

Any market organisation but the seller registers one (one open per organisation and
product); staff may suspend the listing pending the decision (the product's own suspension
path: ``dx.listing.suspended``, so its grants suspend with cause ``listing``) and then uphold
or dismiss it. A dismissal reinstates the listing if the objection suspended it and no other
open objection holds it; an upheld objection keeps it suspended, as the staff's own
suspension, and delisting stays the staff's ordinary action. The product's public status
shows each objection and its decision, never who objected or what they wrote.

Every change, its audit row and its event (``dx.listing.objection_*``) commit together.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from exchange.listings import objection_repository as repository
from exchange.listings.objection_repository import objection
from exchange.listings.schemas import (
    ListingObjection,
    ListingObjectionDecision,
    ListingObjectionFiling,
)
from exchange.listings.service import ListingService
from exchange.listings.states import DECIDING, OBJECTION, ObjectionState
from exchange.platform.audit import Actor, record
from exchange.platform.auth import Principal
from exchange.platform.db import Connection
from exchange.platform.errors import Conflict, FieldError, Forbidden, InvalidInput, NotFound
from exchange.platform.events import ListingObjectionEventData
from exchange.platform.outbox import enqueue

STAFF: Final = ("reviewer", "admin")
# A product that was never listed is nobody else's business: 404, as for any other caller.
OBJECTABLE: Final = ("listed", "suspended")


class ObjectionService:
    """Objections to the registrations of the listing room's products."""

    def __init__(self, listings: ListingService) -> None:
        self.listings = listings
        self.pool = listings.pool
        self.clock = listings.clock
        self.settings = listings.settings

    async def register(
        self,
        actor: Actor,
        principal: Principal,
        product_id: uuid.UUID,
        filing: ListingObjectionFiling,
    ) -> ListingObjection:
        """Register ``principal``'s objection to a listed or suspended product: 404 for one
        never listed, 403 for its seller, 409 naming the state otherwise (delisted) and 409
        while the organisation's earlier objection to it is open."""
        _distinct(filing.evidence_sha256)
        now = self.clock.now()
        objection_id = uuid.uuid4()
        async with self.pool.acquire() as conn, conn.transaction():
            product = await conn.fetchrow(
                "SELECT seller_org_id, state, product_code FROM products WHERE id = $1 FOR SHARE",
                product_id,
            )
            if product is None or product["product_code"] is None:
                raise NotFound(f"no listed product {product_id}")
            if product["seller_org_id"] == principal.org_id:
                raise Forbidden(
                    "the seller cannot object to its own product's registration: delist it"
                    " or revise it instead",
                    extensions={"product_id": str(product_id)},
                )
            if product["state"] not in OBJECTABLE:
                raise Conflict(
                    f"the product is {product['state']}: objections are registered against"
                    f" a {' or '.join(OBJECTABLE)} product",
                    extensions={"state": product["state"], "objectable": list(OBJECTABLE)},
                )
            if not await repository.insert(
                conn, objection_id=objection_id, product_id=product_id,
                claimant_org_id=principal.org_id, claim=filing.claim,
                statement=filing.statement, evidence_sha256=filing.evidence_sha256, at=now,
            ):  # fmt: skip
                held = await repository.open_one(conn, product_id, principal.org_id)
                raise Conflict(
                    f"your organisation's objection {held['id']} to this product is still open:"
                    " one open objection per organisation and product",
                    extensions={"objection_id": str(held["id"])},
                )
            await record(
                conn, actor, at=now, action="listing_objection.registered",
                subject_type="listing_objection", subject_id=objection_id, after=filing,
                detail={"product_id": str(product_id), "claim": filing.claim,
                        "evidence": len(filing.evidence_sha256)},
            )  # fmt: skip
            return await self._announce(conn, actor, objection_id, "registered", now)

    async def suspend_listing(
        self, actor: Actor, objection_id: uuid.UUID, reason: str
    ) -> ListingObjection:
        """Staff suspend the objection's listing until it is decided, through the product's
        suspension (``hold_for_objection``). A listing other open objections hold already is
        held by this one too; one suspended for another cause is a 409 (the objection would
        not hold it, and its dismissal must not lift that suspension)."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._locked(conn, objection_id)
            OBJECTION.next(row["state"], "suspend_listing")
            if row["suspended_listing"]:
                raise Conflict(
                    f"the objection holds the listing suspended already (since"
                    f" {row['suspended_at'].isoformat()})",
                    extensions={"suspended_at": row["suspended_at"].isoformat()},
                )
            product = await self.listings.locked(conn, row["product_id"])
            state, cause = product["state"], product["suspended_by"]
            detail = {"objection_id": str(objection_id)}
            if state == "listed":
                await self.listings.take_action(
                    conn, actor, product, "hold_for_objection", reason, now, detail
                )
            elif not (state == "suspended" and cause == "objection"):
                raise Conflict(
                    f"the product is {state}" + (f" (suspended by {cause})" if cause else "")
                    + ": an objection holds only a listed product, or one other objections"
                    " hold suspended; reinstate it first to hold it for this objection",
                    extensions={"state": state, "suspended_by": cause},
                )  # fmt: skip
            await repository.mark_suspended(conn, objection_id, reason, now)
            await record(
                conn, actor, at=now, action="listing_objection.suspended_listing",
                subject_type="listing_objection", subject_id=objection_id,
                detail={"product_id": str(row["product_id"]), "reason": reason,
                        "listing_was": state},
            )  # fmt: skip
            return await self._announce(conn, actor, objection_id, "suspended_listing", now)

    async def decide(
        self, actor: Actor, objection_id: uuid.UUID, decision: ListingObjectionDecision
    ) -> ListingObjection:
        """Uphold or dismiss a registered objection (409 once decided). Dismissed: the listing
        is reinstated if this objection suspended it and no other open objection holds it.
        Upheld: a listing it holds stays suspended, as the staff's own suspension."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await self._locked(conn, objection_id)
            state: ObjectionState = OBJECTION.next(row["state"], DECIDING[decision.outcome])
            await repository.decide(conn, objection_id, state, decision.reason, now)
            product = await self.listings.locked(conn, row["product_id"])
            held = (
                row["suspended_listing"]
                and product["state"] == "suspended"
                and product["suspended_by"] == "objection"
            )
            others = await repository.others_holding(conn, row["product_id"], objection_id)
            reinstated = False
            why = f"objection {objection_id} {state}: {decision.reason}"
            if state == "dismissed" and held and not others:
                detail = {"objection_id": str(objection_id)}
                await self.listings.take_action(conn, actor, product, "reinstate", why, now, detail)
                reinstated = True
            elif state == "upheld" and held:
                await self.listings.keep_suspended(conn, actor, row["product_id"], why, now)
            await record(
                conn, actor, at=now, action=f"listing_objection.{state}",
                subject_type="listing_objection", subject_id=objection_id,
                detail={"product_id": str(row["product_id"]), "reason": decision.reason,
                        "listing_reinstated": reinstated, "other_holds": others},
            )  # fmt: skip
            note = _note(state, held=held, reinstated=reinstated, others=others)
            return await self._announce(
                conn, actor, objection_id, "decided", now, reinstated=reinstated, note=note
            )

    # --- reading ----------------------------------------------------------------------------

    async def get(self, principal: Principal, objection_id: uuid.UUID) -> ListingObjection:
        """Staff, the claimant and the seller see the objection; anyone else gets 404."""
        row = await repository.fetch(self.pool, objection_id)
        if row is None or not (
            principal.has(*STAFF)
            or principal.org_id in (row["claimant_org_id"], row["seller_org_id"])
        ):
            raise NotFound(f"no objection {objection_id}")
        return objection(row)

    async def find(
        self,
        *,
        state: ObjectionState | Sequence[ObjectionState] | None,
        after: tuple[datetime, uuid.UUID] | None,
        limit: int,
        product_id: uuid.UUID | None = None,
    ) -> list[ListingObjection]:
        """Objections (in ``state``, one of several, or all; to one product, or to any) oldest
        first, for staff."""
        states = [state] if isinstance(state, str) else state
        return await repository.by_state(self.pool, states, after, limit, product_id)

    # --- inside the transaction -------------------------------------------------------------

    async def _locked(self, conn: Connection, objection_id: uuid.UUID) -> Any:
        row = await repository.fetch(conn, objection_id, lock=True)
        if row is None:
            raise NotFound(f"no objection {objection_id}")
        return row

    async def _announce(
        self,
        conn: Connection,
        actor: Actor,
        objection_id: uuid.UUID,
        event: str,
        at: datetime,
        *,
        reinstated: bool = False,
        note: str | None = None,
    ) -> ListingObjection:
        """The objection as it now stands, announced as ``dx.listing.objection_<event>``."""
        row = await repository.fetch(conn, objection_id)
        data = ListingObjectionEventData(
            objection_id=str(objection_id), product_id=str(row["product_id"]),
            product_code=row["product_code"], exchange=self.settings.exchange_code,
            seller_org_id=str(row["seller_org_id"]),
            claimant_org_id=str(row["claimant_org_id"]), claim=row["claim"], state=row["state"],
            suspended_listing=row["suspended_listing"], decision_reason=row["decision_reason"],
            listing_reinstated=reinstated,
        )  # fmt: skip
        await enqueue(
            conn,
            # One token below dx.listing.*: the listing's consumers (delivery) never see it.
            subject=self.settings.subject("listing", f"objection.{event}"),
            event_type=f"dx.listing.objection_{event}",
            source=f"urn:dataex:exchange:{self.settings.exchange_code}",
            event_subject=str(objection_id),
            data=data,
            at=at,
            request_id=actor.request_id,
        )
        return objection(row, note)


def _distinct(digests: list[str]) -> None:
    seen: set[str] = set()
    for index, digest in enumerate(digests):
        if digest in seen:
            raise InvalidInput(
                "each evidence digest once",
                errors=[FieldError(path=f"evidence_sha256[{index}]", message="repeated",
                                   source="body")],
            )  # fmt: skip
        seen.add(digest)


def _note(state: ObjectionState, *, held: bool, reinstated: bool, others: int) -> str | None:
    """What the decision means for the listing, said in the decision's answer."""
    if reinstated:
        return "dismissed: the listing this objection held suspended is reinstated"
    if state == "dismissed" and held:
        return f"dismissed: {others} other open objection(s) still hold the listing suspended"
    if state == "upheld" and held:
        return (
            "upheld: the listing stays suspended, now as the staff's own suspension; delist it"
            " (POST /v1/products/{id}/delist) or reinstate it once the claim is settled"
        )
    if state == "upheld":
        return (
            "upheld: the objection did not suspend the listing, which stays as it is; suspend"
            " or delist it through the product's own actions"
        )
    return None
