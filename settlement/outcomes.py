"""What a settlement step writes besides money: its ledger entry and the event announcing it.

Shared by the two-phase steps (`settlement.service`) and a metered trade's steps
(`settlement.metered`), so a trade's entries and ``dx.trade.*`` events look the same whichever
way it ends.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Literal

from exchange.platform.db import Connection
from exchange.platform.events import TradeSettlementData
from exchange.platform.settings import Settings
from settlement import book, ledger

# the dx.trade.* a step announces
Outcome = Literal["reserved", "settled", "failed", "voided", "split"]
FinalStep = Literal["settled", "voided"]
# Called in the settlement's transaction with the trades (contract ids) it has just voided
# (``dx.trade.voided``): the orders room stops counting the exports of those that delivered
# nothing. The composition root passes it.
VoidedHook = Callable[[Connection, Sequence[uuid.UUID]], Awaitable[None]]


def draft_row(
    row: Any,
    step: ledger.Step,
    movement: uuid.UUID | None,
    *,
    price_fen: int | None = None,
    fee_fen: int | None = None,
    period: int | None = None,
    statement_digest: str | None = None,
    dispute_id: uuid.UUID | None = None,
    refund_fen: int | None = None,
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
        period=period, statement_digest=statement_digest, dispute_id=dispute_id,
        refund_fen=refund_fen,
    )  # fmt: skip


def outcome_row(
    row: Any, state: Outcome, seq: int, reason: str | None = None, refund_fen: int | None = None
) -> TradeSettlementData:
    """The ``dx.trade.<state>`` event data of the trade in ``row`` (a split: with what went
    back to the buyer)."""
    return TradeSettlementData(
        trade_id=str(row["trade_id"]), order_id=str(row["order_id"]),
        buyer_org_id=str(row["buyer_org_id"]), seller_org_id=str(row["seller_org_id"]),
        price_fen=row["price_fen"], fee_fen=row["fee_fen"], state=state,
        reason=reason, ledger_seq=seq, refund_fen=refund_fen,
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


async def finish(
    conn: Connection,
    settings: Settings,
    trades: Sequence[Any],
    step: FinalStep,
    at: datetime,
    request_id: str | None,
    on_voided: VoidedHook,
    *,
    dispute_id: uuid.UUID | None = None,
) -> list[int]:
    """Post (settled) or void locked trades (settlement_trades rows) in the caller's
    transaction: the movement, the state, the ledger entry (with ``dispute_id`` when a
    dispute's resolution decided it) and ``dx.trade.<step>``. Never a metered trade: it is not
    paid as a whole (`settlement.metered`)."""
    if not trades:
        return []
    if any(t["metered"] for t in trades):
        raise RuntimeError("a metered trade is released, never posted or voided whole")
    movements: dict[uuid.UUID, book.Movement] = {}
    for t in trades:
        if t["price_fen"] + t["fee_fen"] == 0:
            continue
        movements[t["trade_id"]] = (
            book.post(t["trade_id"], t["buyer_org_id"], t["seller_org_id"],
                      t["price_fen"], t["fee_fen"])
            if step == "settled"
            else book.void(t["trade_id"], t["buyer_org_id"], t["price_fen"], t["fee_fen"])
        )  # fmt: skip
    accounts = book.Book(conn)
    await accounts.lock(list(movements.values()))
    made, short = accounts.plan(list(movements.values()))
    if short:  # escrow always holds the reserved amount; anything else is a broken book
        raise RuntimeError(f"escrow does not cover trade {short[0].movement.trade_id}")
    await accounts.write(made, at, request_id)
    ids = [t["trade_id"] for t in trades]
    await conn.execute(
        "UPDATE settlement_trades SET state = $2, updated_at = $3"
        " WHERE trade_id = ANY($1::uuid[])",
        ids, step, at,
    )  # fmt: skip
    drafts = [
        draft_row(t, step, movements[t["trade_id"]].id if t["trade_id"] in movements else None,
                  dispute_id=dispute_id)
        for t in trades
    ]  # fmt: skip
    seqs = await ledger.append(conn, settings.exchange_code, drafts, at)
    await announce(
        conn, settings, [outcome_row(t, step, seq) for t, seq in zip(trades, seqs, strict=True)],
        at, request_id,
    )  # fmt: skip
    if step == "voided":
        await on_voided(conn, ids)
    return seqs
