"""The delivery room's API shapes: grants, delivery tokens, upstreams, top-ups."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from msgspec import Meta, Struct

from exchange.delivery.states import Mode
from exchange.platform.events import GrantState
from exchange.platform.metering import Dimension
from exchange.platform.money import fen


class GrantSnapshot(Struct, frozen=True):
    """What a delivery point (the gateway, the file routes) needs to decide on a request."""

    id: uuid.UUID
    trade_id: uuid.UUID
    mode: Mode
    state: GrantState
    version: int
    buyer_org_id: uuid.UUID
    buyer_uscc: str | None
    seller_org_id: uuid.UUID
    product_id: uuid.UUID
    product_code: str
    revision: int
    dimensions: list[Dimension]
    spend_cap_fen: int | None
    valid_until: datetime
    suspended_by: list[str]


class QuotaView(Struct, frozen=True):
    dimension: str
    limit: int
    used: int
    leased: int


class Grant(Struct, frozen=True):
    id: uuid.UUID
    trade_id: uuid.UUID
    mode: Mode
    state: GrantState
    suspended_by: list[str]
    reason: str | None
    buyer_org_id: uuid.UUID
    seller_org_id: uuid.UUID
    product_id: uuid.UUID
    product_code: str
    revision: int
    revision_digest: str
    plan_id: str
    pricing: str
    purpose: str
    territory: list[str]
    valid_from: datetime
    valid_until: datetime
    dimensions: list[Dimension]
    spend_cap_fen: int | None
    quotas: list[QuotaView]
    version: int
    created_at: datetime
    updated_at: datetime


class GrantPage(Struct):
    items: list[Grant]
    next_cursor: str | None


class TokenIn(Struct, forbid_unknown_fields=True):
    ttl_seconds: Annotated[int, Meta(ge=1, le=900)] = 900


class DeliveryToken(Struct, frozen=True):
    token: str
    token_type: str
    jti: str
    grant_id: uuid.UUID
    scope: str
    expires_at: datetime
    kid: str


class UpstreamIn(Struct, forbid_unknown_fields=True):
    base_url: Annotated[str, Meta(pattern=r"^https?://[^\s/]+(/[^\s]*)?$", max_length=500)]


class Upstream(Struct, frozen=True):
    product_id: uuid.UUID
    base_url: str
    updated_at: datetime


class SuspendIn(Struct, forbid_unknown_fields=True):
    reason: Annotated[str, Meta(min_length=1, max_length=2000)]


class TopUpIn(Struct, forbid_unknown_fields=True):
    amount_fen: Annotated[int, fen(ge=1, le=10**12)]
    key: Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class UsageTotals(Struct, frozen=True):
    grant_id: uuid.UUID
    product_code: str
    records: int
    totals: dict[str, int]
    cost_millifen: int
    periods: int
    charged_fen: int


class ProductUsage(Struct, frozen=True):
    """What a product's grants used and were charged, for its seller (``grants``: per grant)."""

    product_id: uuid.UUID
    product_code: str | None
    records: int
    totals: dict[str, int]
    cost_millifen: int
    charged_fen: int
    grants: list[UsageTotals]


UsageGrouping = Literal["product", "buyer"]


class UsageGroup(Struct, frozen=True):
    """Usage across the grants of one product or of one buyer (staff's view): ``key`` is the
    product's or the buyer's id, ``label`` its product code or USCC."""

    key: uuid.UUID
    label: str
    grants: int
    live: int
    records: int
    totals: dict[str, int]
    cost_millifen: int
    charged_fen: int
