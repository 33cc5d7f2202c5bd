"""Settlement over real PostgreSQL and JetStream: escrow, acceptance, voids, the ledger."""

from __future__ import annotations

from tests.helpers import bearer
from tests.settlement_kit import auto_accept_product, buy, deposit, worker
from tests.test_orders import market, trade

__all__ = ["market", "trade"]  # the fixtures, reused

PRICE = 1_000_000  # the 'std' plan, one period
FEE = 10_000  # 1 %


async def balances(client, token):
    response = await client.get("/v1/accounts/me", headers=bearer(token))
    assert response.status_code == 200, response.text
    body = response.json()
    return body["available_fen"], body["escrow_fen"]


async def test_executed_trade_is_reserved_then_accepted_and_posted(
    client, trade, admin_token, settings, pool, clock
):
    product_id = await auto_accept_product(client, trade)
    buyer_org = trade["buyer_org"]["id"]
    response = await deposit(client, admin_token, buyer_org, 5_000_000, "bank-1")
    assert response.status_code == 201, response.text
    trade_id = await buy(client, trade, product_id)
    async with worker(settings, pool, clock) as w:
        assert await w.drain() == 1
    assert await balances(client, trade["buyer"]) == (5_000_000 - PRICE - FEE, PRICE + FEE)
    view = (await client.get(f"/v1/trades/{trade_id}", headers=bearer(trade["buyer"]))).json()
    assert view["state"] == "reserved" and view["role"] == "buyer"
    assert {(p["account"], p["amount_fen"]) for p in view["postings"]} == {
        ("buyer.available", -(PRICE + FEE)),
        ("buyer.escrow", PRICE + FEE),
    }
    accepted = await client.post(f"/v1/trades/{trade_id}/accept", headers=bearer(trade["buyer"]))
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["state"] == "settled"
    assert await balances(client, trade["buyer"]) == (5_000_000 - PRICE - FEE, 0)
    assert await balances(client, trade["seller"]) == (PRICE, 0)
    again = await client.post(f"/v1/trades/{trade_id}/accept", headers=bearer(trade["buyer"]))
    assert again.status_code == 409
    receipt = await client.get(f"/v1/trades/{trade_id}/receipt", headers=bearer(trade["seller"]))
    assert receipt.status_code == 200, receipt.text
