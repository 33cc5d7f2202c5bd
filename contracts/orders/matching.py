"""Matching an order's terms against the plan the seller offers: pure, one entry per mismatch;
and what the order pays."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from contracts.orders.fees import FeeRule, fee_fen
from contracts.orders.schemas import OrderCreate, TermMismatch
from exchange.listings.schemas import Plan, ProductMetadata
from exchange.platform.errors import FieldError, InvalidInput
from exchange.platform.money import MAX_FEN


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


def metered(plan: Plan) -> bool:
    """A plan billed by use: pricing ``metered`` with a dimension that has a price. Its order
    names a spend cap, reserved at execution and drawn on period by period."""
    return plan.pricing == "metered" and any(d.unit_price_millifen > 0 for d in plan.dimensions)


@dataclass(frozen=True, slots=True)
class Payment:
    """What an order pays: ``price_fen`` and ``fee_fen`` go into its contract and are reserved
    at execution. A metered plan's price is the spend cap and its fee 0 here: each billing
    period pays ``fee_bps`` of its charge instead (`exchange.platform.metering`)."""

    price_fen: int
    fee_fen: int
    fee_bps: int | None = None  # metered plans only


def payment(order: OrderCreate, plan: Plan, rule: FeeRule) -> Payment:
    """The order's price and fee under the plan and the fee rule in effect; a 422 naming
    ``spend_cap_fen`` if a metered plan's order lacks it or another plan's order gives one, and
    one naming ``quantity`` if price x quantity and the fee would come to more than `MAX_FEN`
    (each bound alone lets them: a plan may cost 10^13 fen, an order be for 10^9 of it)."""
    if metered(plan):
        if order.spend_cap_fen is None:
            raise InvalidInput(
                f"plan {plan.id!r} is metered: the order needs spend_cap_fen, the most it may"
                " spend (reserved when the contract is executed)",
                errors=[FieldError(path="spend_cap_fen", source="body",
                                   message="required for a metered plan")],
            )  # fmt: skip
        return Payment(order.spend_cap_fen, 0, rule.bps)
    if order.spend_cap_fen is not None:
        raise InvalidInput(
            f"plan {plan.id!r} is priced {plan.pricing} per order, not by use: spend_cap_fen"
            " applies only to metered plans with priced dimensions",
            errors=[FieldError(path="spend_cap_fen", source="body",
                               message="only for a metered plan")],
        )  # fmt: skip
    price = price_fen(plan, order.quantity)
    fee = fee_fen(price, rule) if price else 0
    if price + fee > MAX_FEN:
        raise InvalidInput(
            f"plan {plan.id!r} at {plan.price_fen} fen x quantity {order.quantity} comes to"
            f" {price} fen and {fee} fen fee: an order may cost at most {MAX_FEN} fen (2^53 - 1)",
            errors=[FieldError(path="quantity", source="body",
                               message=f"price x quantity and the fee must be at most {MAX_FEN}"
                                       " fen")],
            extensions={"max_fen": MAX_FEN},
        )  # fmt: skip
    return Payment(price, fee)
