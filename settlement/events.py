"""Events the settlement worker emits: ``dx.trade.settled``, ``.failed`` and ``.voided``."""

from __future__ import annotations

from typing import Literal

import msgspec

from contracts.outbox import CloudEvent


class TradeSettlementData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    trade_id: str
    order_id: str
    buyer_org_id: str
    seller_org_id: str
    price_fen: int
    fee_fen: int
    state: Literal["settled", "failed", "voided"]
    reason: str | None
    ledger_seq: int


class TradeSettlementEvent(CloudEvent, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A settlement step's outcome: money posted to the seller, the trade unfunded, or voided."""

    type: Literal["dx.trade.settled", "dx.trade.failed", "dx.trade.voided"]
    data: TradeSettlementData


def settlement_schema() -> dict[str, object]:
    schema = msgspec.json.schema(TradeSettlementEvent)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "urn:dataex:schema:dx.trade.settlement"
    return schema
