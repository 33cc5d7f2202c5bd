"""Disputes in tests: reserved trades to dispute, opening one through the API, the disputes
service as the API's wiring builds it, a trade's settlement state, an organisation's balances."""

from __future__ import annotations

import uuid
from typing import Any

from exchange import wiring
from exchange.platform.signing import KeyRing, load_master_key
from tests.kit.api import bearer
from tests.kit.market import auto_accept_product, buy, deposit
from tests.kit.settlement import worker

PRICE = 1_000_000  # the 'std' plan, one unit
FEE = 10_000
HELD = PRICE + FEE
PNG = b"\x89PNG\r\n\x1a\n" + b"screenshot of the delivered table" * 10


async def reserved_trade(
    client, trade, admin_token, settings, pool, clock, n: int = 1, quantity: int = 1
) -> list[str]:
    """``n`` trades of ``quantity`` units (each holding ``quantity`` times HELD), executed and
    reserved by the settlement worker. Two units are at the tests' four-eyes amount."""
    product_id = await auto_accept_product(client, trade)
    ref = f"bank-{uuid.uuid4()}"
    amount = n * quantity * HELD
    response = await deposit(client, admin_token, trade["buyer_org"]["id"], amount, ref)
    assert response.status_code == 201, response.text
    trade_ids = [await buy(client, trade, product_id, quantity) for _ in range(n)]
    async with worker(settings, pool, clock) as w:
        assert await w.drain() == n
    return trade_ids


def service(pool, clock, settings):
    return wiring.disputes(pool, clock, settings, KeyRing(load_master_key(settings.state_dir)))


async def open_dispute(client, token, trade_id, **body: Any):
    return await client.post(
        f"/v1/trades/{trade_id}/disputes",
        json={"reason": "not_as_described", "claimed_fen": 50_000,
              "statement": "字段与说明书不符"} | body,
        headers=bearer(token),
    )  # fmt: skip


async def trade_state(client, token, trade_id) -> str:
    view = await client.get(f"/v1/trades/{trade_id}", headers=bearer(token))
    assert view.status_code == 200, view.text
    state: str = view.json()["state"]
    return state


async def balances(client, token) -> tuple[int, int]:
    """The token's organisation's available and escrowed fen."""
    view = await client.get("/v1/accounts/me", headers=bearer(token))
    assert view.status_code == 200, view.text
    return view.json()["available_fen"], view.json()["escrow_fen"]
