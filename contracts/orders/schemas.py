from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from contracts.orders.states import OrderState
from contracts.policy.attributes import Country
from exchange.platform.money import fen


class OrderCreate(Struct, forbid_unknown_fields=True, frozen=True):
    product_id: uuid.UUID
    plan_id: Annotated[str, Meta(min_length=1, max_length=32)]
    purpose: Annotated[str, Meta(min_length=1, max_length=100)]
    territory: Annotated[list[Country], Meta(min_length=1, max_length=50)]
    buyer_country: Country
    delivery_country: Country
    term_days: Annotated[int, Meta(ge=1, le=36500)]
    redistribution: bool
    quantity: Annotated[int, Meta(ge=1, le=1_000_000_000)] = 1
    pi_subject_count: Annotated[int, Meta(ge=0, le=10_000_000_000)] = 0
    template: Literal[
        "data-provision", "entrusted-processing", "joint-development", "intermediary-service"
    ] = "data-provision"
    # A metered plan (billed by use): the most the buyer will spend, reserved at execution as
    # the order's price. Required for such a plan, refused for any other.
    spend_cap_fen: Annotated[int, fen(ge=1, le=10**12)] | None = None


class TermMismatch(Struct, frozen=True):
    term: str
    asked: Any
    offered: Any


class Order(Struct, frozen=True):
    id: uuid.UUID
    state: OrderState
    buyer_org_id: uuid.UUID
    seller_org_id: uuid.UUID
    product_id: uuid.UUID
    revision: int
    terms: OrderCreate
    price_fen: int
    fee_fen: int
    policy: dict[str, Any]
    cleared: list[str]
    contract_id: uuid.UUID | None
    contract_digest: str | None
    review_case_id: uuid.UUID | None
    reason: str | None
    created_at: datetime
    updated_at: datetime


class OrderPage(Struct):
    items: list[Order]
    next_cursor: str | None


class CancelRequest(Struct, forbid_unknown_fields=True):
    reason: Annotated[str, Meta(min_length=1, max_length=2000)]
