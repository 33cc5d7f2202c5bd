"""Grants for tests: an executed trade's delivery terms, applied as the delivery worker would."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from exchange import wiring
from exchange.delivery.service import GrantService
from exchange.delivery.worker import apply
from exchange.platform import outbox
from exchange.platform.events import DeliveryTerms, TradeExecutedData, TradeParty
from exchange.platform.metering import Dimension
from exchange.platform.settings import Settings
from exchange.platform.signing import KeyRing, load_master_key


def grant_service(pool: Any, clock: Any, settings: Settings) -> GrantService:
    return wiring.grants(pool, clock, settings, KeyRing(load_master_key(settings.state_dir)))


def executed(
    *,
    product_id: str,
    product_code: str,
    buyer_org: dict[str, Any],
    seller_org: dict[str, Any],
    modes: tuple[str, ...] = ("api",),
    dimensions: list[Dimension] | None = None,
    pricing: str = "one_off",
    spend_cap_fen: int | None = None,
    term_days: int = 30,
    trade_id: uuid.UUID | None = None,
) -> TradeExecutedData:
    """A ``dx.trade.executed`` payload with delivery terms (the contract row is not needed)."""
    trade = trade_id or uuid.uuid4()
    return TradeExecutedData(
        trade_id=str(trade), order_id=str(uuid.uuid4()), contract_digest="sha256:" + "0" * 64,
        buyer=TradeParty(org_id=buyer_org["id"], name=buyer_org["name"], uscc=buyer_org["uscc"]),
        seller=TradeParty(org_id=seller_org["id"], name=seller_org["name"],
                          uscc=seller_org["uscc"]),
        product_code=product_code, price_fen=spend_cap_fen or 0, fee_fen=0, acceptance_days=7,
        executed_at=datetime.now(UTC).isoformat(),
        delivery=DeliveryTerms(
            product_id=product_id, revision=1, revision_digest="sha256:" + "1" * 64,
            plan_id="std", pricing=pricing,  # type: ignore[arg-type]
            modes=list(modes),  # type: ignore[arg-type]
            purpose="research", territory=["CN"], term_days=term_days,
            dimensions=dimensions or [], spend_cap_fen=spend_cap_fen,
            fee_bps=100 if pricing == "metered" else None,
        ),
    )  # fmt: skip


def envelope(event_type: str, data: Any) -> bytes:
    return outbox.envelope(
        uuid.uuid4(), source="urn:test", event_type=event_type, event_subject=None, data=data,
        at=datetime.now(UTC), request_id=None,
    )  # fmt: skip


async def deliver(pool: Any, grants: GrantService, subject: str, event_type: str,
                  data: Any) -> None:  # fmt: skip
    """Hand one event to the delivery room's handler, in a transaction, as its worker does."""
    async with pool.acquire() as conn, conn.transaction():
        await apply(conn, grants, subject, envelope(event_type, data))


async def active_grant(pool: Any, grants: GrantService, data: TradeExecutedData) -> uuid.UUID:
    """Create the trade's grants and activate them (settlement reserved); the first grant's id."""
    await deliver(pool, grants, "dx.trade.executed", "dx.trade.executed", data)
    await deliver(pool, grants, "dx.trade.reserved", "dx.trade.reserved", reserved(data))
    mode = data.delivery.modes[0] if data.delivery else "api"
    return uuid.uuid5(uuid.UUID(data.trade_id), mode)


def reserved(data: TradeExecutedData) -> dict[str, Any]:
    return {
        "trade_id": data.trade_id, "order_id": data.order_id,
        "buyer_org_id": data.buyer.org_id, "seller_org_id": data.seller.org_id,
        "price_fen": data.price_fen, "fee_fen": data.fee_fen, "state": "reserved",
        "reason": None, "ledger_seq": 0,
    }  # fmt: skip
