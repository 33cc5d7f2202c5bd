"""Values the disputes room exchanges with the rooms it draws on.

The disputes room never imports settlement, orders, listings, delivery or compute: the
composition root (`exchange.wiring`) hands it their entry points as hooks, and these are the
values those hooks take and give — like the events of `exchange.platform.events`, they live on
the floor so both sides can name them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from exchange.platform.errors import Conflict


@dataclass(frozen=True, slots=True)
class PeriodFacts:
    """A posted billing period of a metered trade."""

    period: int
    grant_id: uuid.UUID
    charge_fen: int
    fee_fen: int
    statement_digest: str
    posted_at: datetime


@dataclass(frozen=True, slots=True)
class TradeFacts:
    """What settlement knows of a trade that a dispute needs."""

    trade_id: uuid.UUID
    state: str  # settlement's: pending reserved disputed failed settled voided split
    metered: bool
    buyer_org_id: uuid.UUID
    seller_org_id: uuid.UUID
    product_code: str
    price_fen: int
    fee_fen: int
    held_fen: int  # what escrow holds for the trade now
    executed_at: datetime
    acceptance_due: datetime
    periods: tuple[PeriodFacts, ...] = ()


@dataclass(frozen=True, slots=True)
class MoneyOutcome:
    """What a dispute's resolution moved, and the trade's state after it."""

    state: str  # settled | voided | split | reserved | the state it was in (nothing moved)
    refund_fen: int  # to the buyer
    seller_fen: int  # to the seller (negative: taken back from the seller)
    fee_fen: int  # to the exchange (negative: fee returned)
    ledger_seq: int | None


@dataclass(frozen=True, slots=True)
class LedgerProofs:
    """Ledger entries with RFC 6962 inclusion proofs against one signed tree head."""

    tree_head: str  # compact JWS of the tree head (settlement.ledger.TreeHeadClaims)
    entries: tuple[tuple[bytes, tuple[str, ...]], ...]  # canonical entry bytes, hex proof


@dataclass(frozen=True, slots=True)
class SystemEvidence:
    """An evidence item the exchange attaches to a dispute by itself."""

    kind: str  # contract | listing | grants | tokens | usage | job_receipts | ledger_receipt
    name: str  # its file name in the bundle, e.g. "usage-records.jsonl"
    media_type: str
    body: bytes


class TradeDisputed(Conflict):
    """A step that would post or release money a dispute holds (a metered trade's billing
    period, the release at the end of its grant): it must wait for the dispute's resolution.
    The delivery room leaves the period unposted and tries again in a later round."""

    code = "trade_disputed"
    title = "The trade is held by an open dispute"
