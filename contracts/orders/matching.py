"""Matching an order's terms against the plan the seller offers: pure, one entry per mismatch."""

from __future__ import annotations

import uuid

from contracts.orders.schemas import OrderCreate, TermMismatch
from exchange.listings.schemas import Plan, ProductMetadata


def match(
    order: OrderCreate,
    metadata: ProductMetadata,
    plan: Plan | None,
    *,
    product_state: str,
    seller_org_id: uuid.UUID,
    buyer_org_id: uuid.UUID,
) -> list[TermMismatch]:
    """Every way the order differs from what is offered; empty when it matches."""
    mismatches: list[TermMismatch] = []
    if product_state != "listed":
        mismatches.append(TermMismatch("product", "listed", product_state))
    if buyer_org_id == seller_org_id:
        mismatches.append(TermMismatch("buyer", "another organisation", "the seller itself"))
    if plan is None:
        offered = [p.id for p in metadata.plans]
        mismatches.append(TermMismatch("plan_id", order.plan_id, offered))
        return mismatches
    if order.purpose not in plan.purposes:
        mismatches.append(TermMismatch("purpose", order.purpose, list(plan.purposes)))
    outside = [c for c in order.territory if c not in plan.territory]
    if outside:
        mismatches.append(TermMismatch("territory", order.territory, list(plan.territory)))
    if order.term_days > plan.max_term_days:
        mismatches.append(TermMismatch("term_days", order.term_days, plan.max_term_days))
    if order.redistribution and not plan.redistribution:
        mismatches.append(TermMismatch("redistribution", True, False))
    if plan.pricing == "one_off" and order.quantity != 1:
        mismatches.append(TermMismatch("quantity", order.quantity, 1))
    return mismatches


def price_fen(plan: Plan, quantity: int) -> int:
    return 0 if plan.free else plan.price_fen * quantity
