"""What a settlement step writes besides money: its ledger entry and the event announcing it.

Shared by the two-phase steps (`settlement.service`) and a metered trade's steps
(`settlement.metered`), so a trade's entries and ``dx.trade.*`` events look the same whichever
way it ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from exchange.platform.db import Connection
from exchange.platform.events import TradeSettlementData
from exchange.platform.settings import Settings
from settlement import ledger

Outcome = Literal["reserved", "settled", "failed", "voided"]  # the dx.trade.* a step announces


def draft_row(
    row: Any,
    step: ledger.Step,
    movement: uuid.UUID | None,
    *,
    price_fen: int | None = None,
    fee_fen: int | None = None,
    period: int | None = None,
    statement_digest: str | None = None,
) -> ledger.EntryDraft:
    """The ledger entry of a step of the trade in ``row`` (a settlement_trades row). The
    amounts default to the trade's price and fee; a metered step names what it moved."""
    return ledger.EntryDraft(
        trade_id=row["trade_id"], step=step, contract_digest=row["contract_digest"],
        product_code=row["product_code"],
        buyer=ledger.EntryParty(str(row["buyer_org_id"]), row["buyer_uscc"]),
        seller=ledger.EntryParty(str(row["seller_org_id"]), row["seller_uscc"]),
        price_fen=row["price_fen"] if price_fen is None else price_fen,
        fee_fen=row["fee_fen"] if fee_fen is None else fee_fen, movement_id=movement,
        period=period, statement_digest=statement_digest,
    )  # fmt: skip


def outcome_row(
    row: Any, state: Outcome, seq: int, reason: str | None = None
) -> TradeSettlementData:
    """The ``dx.trade.<state>`` event data of the trade in ``row``."""
    return TradeSettlementData(
        trade_id=str(row["trade_id"]), order_id=str(row["order_id"]),
        buyer_org_id=str(row["buyer_org_id"]), seller_org_id=str(row["seller_org_id"]),
        price_fen=row["price_fen"], fee_fen=row["fee_fen"], state=state,
        reason=reason, ledger_seq=seq,
    )  # fmt: skip


async def announce(
    conn: Connection,
    settings: Settings,
    outcomes: Sequence[TradeSettlementData],
    at: datetime,
    request_id: str | None,
    traceparents: Sequence[str | None] | None = None,
) -> None:
    """``dx.trade.<state>`` for each outcome, through the outbox in the caller's transaction;
    ``traceparents``: each one's trace (None: the current span's)."""
    from exchange.platform.outbox import enqueue_many

    if not outcomes:
        return
    await enqueue_many(
        conn,
        [(settings.subject("trade", o.state), f"dx.trade.{o.state}", o.trade_id, o)
         for o in outcomes],
        source=f"urn:dataex:exchange:{settings.exchange_code}",
        at=at,
        request_id=request_id,
        traceparents=traceparents,
    )  # fmt: skip
