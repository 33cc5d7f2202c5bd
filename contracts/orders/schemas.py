from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from contracts.orders.states import ContractState, OrderState
from contracts.policy.attributes import Country
from contracts.policy.schemas import Decision, Outcome, Route
from exchange.listings.schemas import DeliveryMode, Plan, Pricing, Rights
from exchange.platform.metering import Dimension
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


TRADE_ID = (
    "The trade's id, which is its contract's id: settlement registers, reserves, settles and"
    " receipts the trade under it (GET /v1/trades/{trade_id}, …/receipt). Set once the"
    " contract is executed, null before."
)


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
    policy: Decision  # the order-time policy decision, as recorded when it was placed
    cleared: list[str]
    contract_id: uuid.UUID | None
    contract_digest: str | None
    trade_id: Annotated[uuid.UUID | None, Meta(description=TRADE_ID)]
    review_case_id: uuid.UUID | None
    reason: str | None
    created_at: datetime
    updated_at: datetime


class OrderPage(Struct):
    items: list[Order]
    next_cursor: str | None


class CancelRequest(Struct, forbid_unknown_fields=True):
    reason: Annotated[str, Meta(min_length=1, max_length=2000)]


# --- contracts and standing offers ------------------------------------------------------------


class StandingOfferTerms(Struct, frozen=True):
    """What a seller signs once to accept every order that matches a plan: its canonical JSON
    is the payload of the seller's detached JWS."""

    type: Literal["dataex-standing-offer"]
    product_code: str
    revision: int
    revision_digest: str
    seller_uscc: str | None
    plan: Plan


class OfferTerms(Struct, frozen=True):
    """A plan's standing-offer terms, their canonical JSON (RFC 8785; sign it as it is, a
    detached JWS) and its SHA-256 digest."""

    revision: int
    terms: StandingOfferTerms
    canonical: str
    digest: str


class StandingOffer(Struct, frozen=True):
    """A standing offer made: the terms, their canonical JSON and digest, and the seller's
    detached JWS over that JSON."""

    revision: int
    terms: StandingOfferTerms
    canonical: str
    digest: str
    jws: str


class ContractTemplateRef(Struct, frozen=True):
    id: str
    version: str
    title_zh: str


class ExchangeRef(Struct, frozen=True):
    code: str
    name: str


class ContractParty(Struct, frozen=True):
    org_id: str
    name: str
    uscc: str | None


class ContractParties(Struct, frozen=True):
    provider: ContractParty  # the seller
    recipient: ContractParty  # the buyer


class SubjectData(Struct, frozen=True):
    product_code: str
    name_zh: str
    revision: int
    revision_digest: str


class ContractUsage(Struct, frozen=True):
    purpose: str
    territory: list[str]
    term_days: int
    redistribution: bool


class ContractFees(Struct, frozen=True):
    pricing: Pricing
    quantity: int
    price_fen: int
    fee_fen: int
    currency: Literal["CNY"]


class ContractDeliveryTerms(Struct, frozen=True):
    """What delivery grants under the contract and how a metered plan bills."""

    product_id: str
    plan_id: str
    pricing: Pricing
    dimensions: list[Dimension]
    spend_cap_fen: int | None
    fee_bps: int | None


class ContractPolicy(Struct, frozen=True):
    decision: Outcome
    list_version: str
    list_digest: str
    route: Route | None
    cleared: list[str]


class SellerAcceptance(Struct, frozen=True):
    standing_offer_digest: str


class Clause(Struct, frozen=True):
    article: int
    title_zh: str
    text_zh: str


class OriginExchange(Struct, frozen=True):
    """The exchange that listed and certified a recognised product."""

    code: str
    name: str | None
    listing_certificate: str | None


class ContractDocument(Struct, frozen=True, kw_only=True):
    """The standard contract as signed: its digest is SHA-256 over this document's RFC 8785
    canonical JSON, exactly as served (keep it as it is to check the digest). Fields added
    since the first contracts (``delivery_terms``, ``origin_exchange``) are absent from the
    documents that predate them; ``origin_exchange`` only names a recognised product's origin."""

    contract_id: str
    order_id: str
    template: ContractTemplateRef
    exchange: ExchangeRef
    parties: ContractParties
    subject_data: SubjectData
    rights: Rights
    usage: ContractUsage
    delivery: list[DeliveryMode]
    acceptance_days: int
    fees: ContractFees
    policy: ContractPolicy
    seller_acceptance: SellerAcceptance | None
    clauses: list[Clause]
    created_at: str
    delivery_terms: ContractDeliveryTerms | None = None
    origin_exchange: OriginExchange | None = None


class ContractSignature(Struct, frozen=True):
    """A signature of the contract's digest: a party's own (``signature``), by the exchange
    with the key it holds for the party (``custodial``), by the seller's standing offer
    (``standing_offer``), or the exchange's countersignature."""

    party: Literal["buyer", "seller", "exchange"]
    kind: Literal["signature", "custodial", "standing_offer", "countersignature"]
    kid: str
    jws: str
    signed_at: datetime


class Contract(Struct, frozen=True):
    """A trade's standard contract: the canonical document, its digest, the Chinese text, the
    signatures and the seller's standing offer when one signed for it."""

    id: uuid.UUID
    trade_id: Annotated[uuid.UUID | None, Meta(description=TRADE_ID)]
    order_id: uuid.UUID
    state: ContractState
    digest: str
    document: ContractDocument
    text_zh: str
    standing_offer: StandingOfferTerms | None
    signatures: list[ContractSignature]
    executed_at: datetime | None
