"""The delivery worker over real JetStream: trades and listings in, grant changes out."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import nats

from exchange.delivery.worker import delivery_loop
from exchange.platform.context import Platform
from exchange.platform.outbox import enqueue, relay_loop
from exchange.platform.signing import KeyRing, load_master_key
from tests.kit.api import bearer
from tests.kit.delivery import executed, grant_service, reserved
from tests.kit.market import listed_product


async def _wait_for(pool, grant_id, state: str, limit: float = 10.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if await pool.fetchval("SELECT state FROM grants WHERE id = $1", grant_id) == state:
            return time.monotonic() - started
        await asyncio.sleep(0.01)
    raise AssertionError(f"grant {grant_id} did not become {state} within {limit}s")


async def test_the_worker_follows_trades_and_listings_through_jetstream(
    client, trade, pool, clock, settings
):
    product = await listed_product(client, trade)
    grants = grant_service(pool, clock, settings)
    connection = await nats.connect(settings.nats_url)
    platform = Platform(settings=settings, clock=clock, pool=pool, nats=connection,
                        keyring=KeyRing(load_master_key(settings.state_dir)))  # fmt: skip
    stop = asyncio.Event()
    tasks = [asyncio.create_task(relay_loop(platform, stop)),
             asyncio.create_task(delivery_loop(platform, stop, grants))]  # fmt: skip
    try:
        data = executed(
            product_id=product["id"], product_code=product["product_code"],
            buyer_org=trade["buyer_org"], seller_org=trade["seller_org"],
        )  # fmt: skip
        grant_id = uuid.uuid5(uuid.UUID(data.trade_id), "api")
        async with pool.acquire() as conn, conn.transaction():
            source = "urn:test"
            await enqueue(conn, subject=settings.subject("trade", "executed"),
                          event_type="dx.trade.executed", source=source, data=data,
                          at=clock.now())  # fmt: skip
            await enqueue(conn, subject=settings.subject("trade", "reserved"),
                          event_type="dx.trade.reserved", source=source, data=reserved(data),
                          at=clock.now())  # fmt: skip
        await _wait_for(pool, grant_id, "active")
        path = f"/v1/products/{product['id']}"
        await client.post(f"{path}/suspend", json={"reason": "核查"},
                          headers=bearer(trade["alice"]))  # fmt: skip
        # How fast is measured by the benchmark, not asserted here (10 s is only a liveness bound).
        await _wait_for(pool, grant_id, "suspended")
        await client.post(f"{path}/reinstate", json={"reason": "好"},
                          headers=bearer(trade["alice"]))  # fmt: skip
        await _wait_for(pool, grant_id, "active")
    finally:
        stop.set()
        for task in tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
        await connection.close()
