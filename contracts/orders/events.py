"""Events of orders and trades, as types and JSON Schema (the settlement worker's input)."""

from __future__ import annotations

from typing import Literal

import msgspec

from contracts.outbox import CloudEvent


class TradeParty(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    org_id: str
    name: str
    uscc: str | None


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


def _schema(kind: type[msgspec.Struct], name: str) -> dict[str, object]:
    schema = msgspec.json.schema(kind)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"urn:dataex:schema:{name}"
    return schema


def trade_schema() -> dict[str, object]:
    return _schema(TradeExecuted, "dx.trade.executed")


def order_schema() -> dict[str, object]:
    return _schema(OrderEvent, "dx.order")
