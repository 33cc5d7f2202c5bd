"""Events that cross rooms, as types and JSON Schema: one module both sides import.

Every event is a CloudEvents 1.0 envelope (`exchange.platform.outbox.CloudEvent`) on subject
``dx.<aggregate>.<event>``. The orders room emits ``dx.order.*`` and ``dx.trade.executed``; the
listing room ``dx.listing.*`` and objections' ``dx.listing.objection.*``; the settlement room
``dx.trade.reserved`` / ``settled`` / ``split`` / ``failed`` / ``voided``; the delivery room
``dx.grant.*`` and ``dx.usage.closed``; the identity room ``dx.organisation.*``; the compute
room ``dx.job.*``; the disputes room ``dx.dispute.*``.
A consumer reads the type here, never the producing room's internals. The JSON Schemas under
``schemas/events`` are generated from these types (``uv run python -m exchange.platform.events``)
and a test checks they are current.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import msgspec

from exchange.platform.db import SCHEMAS_DIR
from exchange.platform.metering import Dimension
from exchange.platform.outbox import CloudEvent

EVENTS_DIR = SCHEMAS_DIR / "events"

LISTING_EVENTS = ("published", "suspended", "delisted")


class ListingEventData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    product_id: str
    product_code: str
    exchange: str
    revision: int | None
    revision_digest: str | None
    seller_name: str | None = None
    seller_uscc: str | None = None
    reason: str | None = None


class ListingEvent(CloudEvent, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``dx.listing.published`` / ``dx.listing.suspended`` / ``dx.listing.delisted``."""

    type: Literal["dx.listing.published", "dx.listing.suspended", "dx.listing.delisted"]
    data: ListingEventData


def listing_schema() -> dict[str, object]:
    return _schema(ListingEvent, "dx.listing")


ObjectionEventType = Literal[
    "dx.listing.objection_registered",
    "dx.listing.objection_suspended_listing",
    "dx.listing.objection_decided",
]


class ListingObjectionEventData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An objection to a product's registration (异议登记) as it stands after a change: never
    the claimant's statement. Published on ``dx.listing.objection.<event>`` (one
    token deeper than ``dx.listing.*``, so the listing's own consumers do not receive it)."""

    objection_id: str
    product_id: str
    product_code: str
    exchange: str
    seller_org_id: str
    claimant_org_id: str
    claim: Literal["ownership", "licence", "personal_information", "trade_secret", "other"]
    state: Literal["registered", "upheld", "dismissed"]
    suspended_listing: bool
    decision_reason: str | None = None
    listing_reinstated: bool = False  # dismissed, and that reinstated the listing


class ListingObjectionEvent(CloudEvent, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``dx.listing.objection_registered`` / ``objection_suspended_listing`` (staff suspended
    the listing pending the decision) / ``objection_decided``."""

    type: ObjectionEventType
    data: ListingObjectionEventData


def listing_objection_schema() -> dict[str, object]:
    return _schema(ListingObjectionEvent, "dx.listing.objection")


class TradeParty(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    org_id: str
    name: str
    uscc: str | None


class DeliveryTerms(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What the delivery room needs of an executed contract to grant access under it."""

    product_id: str
    revision: int
    revision_digest: str
    plan_id: str
    pricing: Literal["one_off", "subscription", "metered"]
    modes: list[Literal["file", "api", "sandbox"]]
    purpose: str
    territory: list[str]
    term_days: int
    dimensions: list[Dimension] = []
    spend_cap_fen: int | None = None  # metered plans: reserved at execution (price = cap)
    fee_bps: int | None = None  # metered plans: the fee rule, applied to each period's charge


class TradeExecutedData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    trade_id: str
    order_id: str
    contract_digest: str
    buyer: TradeParty
    seller: TradeParty
    product_code: str
    price_fen: int
    fee_fen: int
    acceptance_days: int
    executed_at: str
    delivery: DeliveryTerms | None = None  # absent in events from before delivery existed


class TradeExecuted(CloudEvent, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``dx.trade.executed``: a contract signed by both parties and countersigned."""

    type: Literal["dx.trade.executed"]
    data: TradeExecutedData


class OrderEventData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    order_id: str
    reason: str | None = None
    rules: list[str] | None = None
    review: str | None = None


class OrderEvent(CloudEvent, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``dx.order.rejected`` / ``dx.order.cancelled`` / ``dx.order.expired``."""

    type: Literal["dx.order.rejected", "dx.order.cancelled", "dx.order.expired"]
    data: OrderEventData


def trade_schema() -> dict[str, object]:
    return _schema(TradeExecuted, "dx.trade.executed")


def order_schema() -> dict[str, object]:
    return _schema(OrderEvent, "dx.order")


class TradeSettlementData(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True
):
    trade_id: str
    order_id: str
    buyer_org_id: str
    seller_org_id: str
    price_fen: int
    fee_fen: int
    state: Literal["reserved", "settled", "failed", "voided", "split"]
    reason: str | None
    ledger_seq: int
    # split: what a dispute's resolution gave back to the buyer (left out otherwise)
    refund_fen: int | None = None


class TradeSettlementEvent(CloudEvent, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A settlement step's outcome: the payment held in escrow (delivery may start), money
    posted to the seller, the trade unfunded, voided, or split by a dispute's resolution
    (``refund_fen`` to the buyer, the rest to the seller and the exchange's fee pro rata)."""

    type: Literal[
        "dx.trade.reserved",
        "dx.trade.settled",
        "dx.trade.failed",
        "dx.trade.voided",
        "dx.trade.split",
    ]
    data: TradeSettlementData


def settlement_schema() -> dict[str, object]:
    return _schema(TradeSettlementEvent, "dx.trade.settlement")


class OrganisationEventData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    org_id: str
    uscc: str | None
    reason: str | None = None


class OrganisationEvent(CloudEvent, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``dx.organisation.suspended`` / ``dx.organisation.reinstated`` (the identity room)."""

    type: Literal["dx.organisation.suspended", "dx.organisation.reinstated"]
    data: OrganisationEventData


def organisation_schema() -> dict[str, object]:
    return _schema(OrganisationEvent, "dx.organisation")


GrantState = Literal["pending", "active", "suspended", "exhausted", "expired", "revoked"]
GrantEventType = Literal[
    "dx.grant.activated", "dx.grant.suspended", "dx.grant.resumed",
    "dx.grant.exhausted", "dx.grant.expired", "dx.grant.revoked", "dx.grant.changed",
]  # fmt: skip


class GrantEventData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A grant as it stands after a change; ``version`` orders a grant's events."""

    grant_id: str
    trade_id: str
    mode: Literal["file", "api", "sandbox"]
    state: GrantState
    version: int
    buyer_org_id: str
    seller_org_id: str
    product_code: str
    suspended_by: list[str]
    valid_until: str
    reason: str | None = None
    revoked_jti: str | None = None  # dx.grant.changed: a delivery token revoked


class GrantEvent(CloudEvent, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every transition of a delivery grant (``dx.grant.changed``: quotas or cap raised)."""

    type: GrantEventType
    data: GrantEventData


def grant_schema() -> dict[str, object]:
    return _schema(GrantEvent, "dx.grant")


class UsageStatement(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A closed billing period of a grant: what was used and what it costs. Signed by the
    exchange (``jws``) and, for metered plans, posted by settlement once per (trade, period)."""

    type: Literal["dataex.usage-statement.v1"] = "dataex.usage-statement.v1"
    exchange: str
    grant_id: str
    trade_id: str
    product_code: str
    buyer_org_id: str
    seller_org_id: str
    period: int
    starts_at: str
    ends_at: str
    records: int
    totals: dict[str, int]
    cost_millifen: int
    cumulative_cost_millifen: int
    charge_fen: int
    final: bool  # the grant has ended: no period follows


class UsageEvent(CloudEvent, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """``dx.usage.closed``: a period closed, with its statement and signature."""

    type: Literal["dx.usage.closed"]
    data: UsageClosedData


class UsageClosedData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    statement: UsageStatement
    digest: str
    jws: str


def usage_schema() -> dict[str, object]:
    return _schema(UsageEvent, "dx.usage")


JobState = Literal[
    "queued", "running", "checking_output", "succeeded", "failed_algorithm", "failed_platform",
    "timed_out", "limit_exceeded", "output_rejected", "cancelled",
]  # fmt: skip
JobEventType = Literal[
    "dx.job.queued", "dx.job.running", "dx.job.checking_output", "dx.job.succeeded",
    "dx.job.failed_algorithm", "dx.job.failed_platform", "dx.job.timed_out",
    "dx.job.limit_exceeded", "dx.job.output_rejected", "dx.job.cancelled",
]  # fmt: skip


class JobEventData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A compute job as it stands after a change: metadata only, never its result."""

    job_id: str
    grant_id: str
    buyer_org_id: str
    seller_org_id: str
    product_code: str
    kind: Literal["algorithm", "query"]
    state: JobState
    attempts: int
    limit_kind: str | None = None
    rejection_reason: str | None = None
    epsilon_micro: int | None = None
    cpu_ms: int | None = None
    result_sha256: str | None = None


class JobEvent(CloudEvent, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every transition of a compute job (the compute room): ``dx.job.<state>``."""

    type: JobEventType
    data: JobEventData


def job_schema() -> dict[str, object]:
    return _schema(JobEvent, "dx.job")


DisputeState = Literal[
    "opened", "awaiting_response", "under_review", "resolved", "settled_by_agreement",
    "escalated", "closed",
]  # fmt: skip
DisputeReason = Literal[
    "not_delivered", "not_as_described", "quality_below_report", "over_metered",
    "terms_breach_by_buyer", "other",
]  # fmt: skip
DisputeEventType = Literal[
    "dx.dispute.opened", "dx.dispute.awaiting_response", "dx.dispute.under_review",
    "dx.dispute.resolved", "dx.dispute.settled_by_agreement", "dx.dispute.escalated",
    "dx.dispute.closed",
]  # fmt: skip


class DisputeEventData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A dispute as it stands after a transition (``action`` is what moved it). The
    resolution, once there is one, is its canonical JSON's digest and kind; the money it moved
    is settlement's ``dx.trade.*`` event."""

    dispute_id: str
    trade_id: str
    buyer_org_id: str
    seller_org_id: str
    claimant: Literal["buyer", "seller"]
    reason: DisputeReason
    claimed_fen: int
    state: DisputeState
    action: str
    respond_by: str
    resolution_kind: str | None = None
    resolution_digest: str | None = None


class DisputeEvent(CloudEvent, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every transition of a dispute (the disputes room): ``dx.dispute.<state>``."""

    type: DisputeEventType
    data: DisputeEventData


def dispute_schema() -> dict[str, object]:
    return _schema(DisputeEvent, "dx.dispute")


def _schema(kind: type[msgspec.Struct], name: str) -> dict[str, object]:
    schema = msgspec.json.schema(kind)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"urn:dataex:schema:{name}"
    return schema


def generators() -> dict[str, Callable[[], dict[str, object]]]:
    return {
        "dx.listing.schema.json": listing_schema,
        "dx.listing.objection.schema.json": listing_objection_schema,
        "dx.trade.executed.schema.json": trade_schema,
        "dx.order.schema.json": order_schema,
        "dx.trade.settlement.schema.json": settlement_schema,
        "dx.organisation.schema.json": organisation_schema,
        "dx.grant.schema.json": grant_schema,
        "dx.usage.schema.json": usage_schema,
        "dx.job.schema.json": job_schema,
        "dx.dispute.schema.json": dispute_schema,
    }


def render(schema: dict[str, object]) -> str:
    return msgspec.json.format(msgspec.json.encode(schema), indent=2).decode() + "\n"


def write(directory: Path = EVENTS_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, generate in generators().items():
        path = directory / name
        path.write_text(render(generate()), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write():
        print(path)
