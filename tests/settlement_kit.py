"""Shared set-up for settlement tests: executed trades over HTTP, a worker's consumer in-process."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import nats

from contracts.outbox import relay_batch
from exchange.platform.clock import Clock
from exchange.platform.context import Platform
from exchange.platform.signing import KeyRing, load_master_key
from settlement.consumer import Consumer, subscribe
from settlement.service import SettlementService
from tests.helpers import bearer
from tests.test_orders import list_product, order_body, place, standing_offer


@dataclass
class Worker:
    platform: Platform
    service: SettlementService
    consumer: Consumer
    sub: Any

    async def relay(self) -> int:
        total = 0
        while published := await relay_batch(self.platform):
            total += published
        return total

    async def drain(self, wait: float = 0.5) -> int:
        """Relay pending events, then settle until the consumer has nothing more."""
        await self.relay()
        handled = 0
        while n := await self.consumer.poll(self.sub, wait=wait):
            handled += n
        return handled


@contextlib.asynccontextmanager
async def worker(settings: Any, pool: Any, clock: Clock) -> AsyncIterator[Worker]:
    client = await nats.connect(settings.nats_url)
    try:
        platform = Platform(settings=settings, clock=clock, pool=pool, nats=client,
                            keyring=KeyRing(load_master_key(settings.state_dir)))  # fmt: skip
        service = SettlementService(pool, clock, settings, platform.keyring)
        sub = await subscribe(platform)
        yield Worker(platform, service, Consumer(platform, service), sub)
    finally:
        await client.close()


async def auto_accept_product(client: Any, trade: dict[str, Any]) -> str:
    """A listed product whose 'std' plan auto-accepts, and a custodial buyer: each order executes
    in the request that places it."""
    product_id = await list_product(client, trade)
    await standing_offer(client, trade, product_id)
    key = await client.post("/v1/keys/custodial", headers=bearer(trade["buyer"]))
    assert key.status_code == 201, key.text
    return product_id


async def buy(client: Any, trade: dict[str, Any], product_id: str, quantity: int = 1) -> str:
    """Place an order that executes at once; returns the trade (contract) id."""
    response = await place(client, trade, order_body(product_id, quantity=quantity))
    assert response.status_code == 201, response.text
    order = response.json()
    assert order["state"] == "executed", order
    return str(order["contract_id"])


async def deposit(client: Any, admin: str, org_id: str, amount: int, ref: str) -> Any:
    return await client.post(
        f"/v1/accounts/{org_id}/deposits",
        json={"amount_fen": amount, "external_ref": ref},
        headers=bearer(admin),
    )
