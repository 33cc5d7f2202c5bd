"""Trades for staff: every trade and its state, and a trade's page (the order and its contract,
the settlement state, postings and ledger entries, the receipt). Disputes over a trade (which
replaced objections, issue 21) have pages of their own."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Final, get_args

from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import Template

from contracts.orders.service import OrderService
from exchange.console.i18n import Translator
from exchange.console.products import keyset, page_link
from exchange.console.web import ROOT, SECURITY_HEADERS, render
from exchange.identity.service import organisation_names
from exchange.listings.service import ListingService
from exchange.platform.audit.repository import list_entries
from exchange.platform.auth import Principal
from exchange.platform.errors import DataexError, NotFound
from exchange.platform.paging import encode_cursor
from settlement.service import SettlementService
from settlement.states import TradeState

PAGE: Final = 50
# The states a listed trade can be in: "pending" (executed, not yet taken by the settlement
# worker) is never stored, so it is no filter; such a trade's page says so.
STATES: Final[tuple[TradeState, ...]] = tuple(s for s in get_args(TradeState) if s != "pending")


def yuan(fen: int) -> str:
    """Whole fen as yuan with two decimals and thousands separators, by integer arithmetic."""
    whole, cents = divmod(abs(fen), 100)
    return f"{whole:,}.{cents:02d}"


def money(t: Translator, fen: int) -> str:
    """An amount in the reader's words (a negative one, money going out, with its sign)."""
    return ("-" if fen < 0 else "") + t("money.yuan", amount=yuan(fen))


class TradePages(Controller):
    path = f"{ROOT}/trades"

    @get("/")
    async def trades(
        self,
        request: Request[Any, Any, Any],
        settlement: NamedDependency[SettlementService],
        listings: NamedDependency[ListingService],
        principal: NamedDependency[Principal],
        state_name: Annotated[str | None, QueryParameter(name="state")] = None,
        cursor: FromQuery[str | None] = None,
    ) -> Template:
        chosen = next((s for s in STATES if s == state_name), None)
        after = keyset(cursor)
        items = await settlement.list_all(principal, chosen, after, PAGE)
        products = await listings.staff_rows_by_code(principal, [t.product_code for t in items])
        names = await organisation_names(
            settlement.pool, [o for t in items for o in (t.buyer_org_id, t.seller_org_id)]
        )
        filters = {"state": chosen}
        base = f"{ROOT}/trades/"
        return render(
            request,
            "trades.html",
            trades=items,
            products=products,
            names=names,
            filters=filters,
            states=STATES,
            money=money,
            next_page=(
                page_link(base, filters, encode_cursor(items[-1].executed_at, items[-1].trade_id))
                if len(items) == PAGE
                else None
            ),
            first_page=page_link(base, filters) if after else None,
        )

    @get("/{trade_id:uuid}")
    async def trade(
        self,
        request: Request[Any, Any, Any],
        trade_id: FromPath[uuid.UUID],
        settlement: NamedDependency[SettlementService],
        orders: NamedDependency[OrderService],
        listings: NamedDependency[ListingService],
        principal: NamedDependency[Principal],
    ) -> Template:
        return await trade_page(request, trade_id, settlement, orders, listings, principal)

    @get("/{trade_id:uuid}/receipt")
    async def receipt(
        self,
        trade_id: FromPath[uuid.UUID],
        settlement: NamedDependency[SettlementService],
        principal: NamedDependency[Principal],
    ) -> Response[bytes]:
        """The receipt `GET /v1/trades/{id}/receipt` gives its parties, as a download: a
        browser's link cannot carry the bearer token, so the console serves it."""
        body = await settlement.receipt(principal, trade_id, staff_may=True)
        return Response(
            content=body,
            media_type="application/json",
            headers={
                **SECURITY_HEADERS,
                "Content-Disposition": f'attachment; filename="receipt-{trade_id}.json"',
            },
        )


async def trade_page(
    request: Request[Any, Any, Any],
    trade_id: uuid.UUID,
    settlement: SettlementService,
    orders: OrderService,
    listings: ListingService,
    principal: Principal,
    *,
    problem: DataexError | None = None,
    form: Any = None,
) -> Template:
    """The trade (the contract's id) from the rooms that hold it: the order and contract
    (orders), the settlement state, postings and ledger entries (settlement), the product
    (listings); a trade the settlement worker has not seen yet shows without the settlement."""
    contract = await orders.contract(principal, trade_id, staff_may=True)
    order = await orders.get(principal, uuid.UUID(contract["order_id"]))
    try:
        view = await settlement.get(principal, trade_id, staff_may=True)
    except NotFound:
        view = None
    entries = await settlement.ledger_entries(principal, trade_id, staff_may=True) if view else []
    product = await listings.get(principal, order.product_id)
    shown = product.live or product.pending
    names = await organisation_names(settlement.pool, [order.buyer_org_id, order.seller_org_id])
    history = await list_entries(
        settlement.pool, limit=50, subject_type="trade", subject_id=str(trade_id)
    )
    return render(
        request,
        "trade.html",
        status_code=problem.status if problem else 200,
        trade_id=trade_id,
        contract=contract,
        order=order,
        view=view,
        entries=entries,
        product=product,
        product_name=(shown.metadata.name_zh, shown.metadata.name_en) if shown else None,
        names=names,
        history=list(reversed(history)),  # oldest first
        money=money,
        problem=problem,
        form=form or {},
    )
