"""The console's dashboard over HTTP: its figures after real actions. Products by state (the
listing room), orders placed and trades registered today (the orders and settlement rooms),
settlement's lag (the latest trade, the queue, the reconciler's overdue trades) and the dead
letters."""

from __future__ import annotations

import asyncio
import re
from datetime import timedelta

import msgspec

from exchange.console.home import start_of_day
from exchange.platform.clock import OffsetClock
from settlement.reconciler import Reconciler
from tests.kit.api import bearer
from tests.kit.console import sign_in
from tests.kit.documents import metadata
from tests.kit.market import auto_accept_product, buy, deposit, submit
from tests.kit.settlement import enqueue_executed, publish_executed, seeded, worker


def figure(page: str, element_id: str) -> str:
    found = re.search(rf'<dd id="{element_id}"[^>]*>(.*?)</dd>', page, re.S)
    assert found is not None, element_id
    return found.group(1)


def attribute(page: str, element_id: str, name: str) -> str | None:
    found = re.search(rf'<dd id="{element_id}"([^>]*)>', page)
    assert found is not None, element_id
    value = re.search(rf'{name}="([^"]*)"', found.group(1))
    return value.group(1) if value else None


def by_state(page: str) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(r'<dd data-state="([a-z_]+)">(\d+)</dd>', page)}


async def dashboard(client) -> str:
    page = await client.get("/console/")
    assert page.status_code == 200, page.text
    return str(page.text)


async def test_products_by_state_follow_submissions(client, market):
    await sign_in(client, market["alice"])
    assert by_state(await dashboard(client)) == {
        "draft": 0, "in_review": 0, "changes_requested": 0, "rejected": 0, "listed": 0,
        "suspended": 0, "delisted": 0,
    }  # fmt: skip
    for name in ("城市气象观测数据", "港口吞吐量数据"):
        await submit(client, market["seller"], metadata(name_zh=name))
    draft = await client.post("/v1/products", json=metadata(), headers=bearer(market["seller"]))
    assert draft.status_code == 201
    core = await submit(
        client,
        market["other"],
        metadata(classification__data_level="core", classification__general_grade=None),
    )  # the negative list rejects core data at once
    assert core["state"] == "rejected"
    states = by_state(await dashboard(client))
    assert (states["in_review"], states["draft"], states["rejected"], states["listed"]) == (
        2, 1, 1, 0,
    )  # fmt: skip
    assert figure(await dashboard(client), "open-cases") == "2"  # the queue agrees


async def test_orders_and_trades_today_and_the_settlement_queue(
    client, trade, admin_token, settings, pool, clock
):
    product_id = await auto_accept_product(client, trade)
    funded = await deposit(client, admin_token, trade["buyer_org"]["id"], 10**8, "dash-1")
    assert funded.status_code == 201, funded.text
    trades = [await buy(client, trade, product_id) for _ in range(2)]
    await sign_in(client, trade["alice"])
    page = await dashboard(client)
    assert (figure(page, "orders-today"), figure(page, "trades-today")) == ("2", "0")
    assert attribute(page, "latest-lag", "data-seconds") is None  # nothing registered yet
    async with worker(settings, pool, clock) as w:
        await w.relay()  # executed, published, not yet settled: waiting in the queue
        page = await dashboard(client)
        assert attribute(page, "queued", "data-count") == "2"
        assert "最久已等待" in figure(page, "queued")
        assert await w.drain() == 2
    page = await dashboard(client)
    assert (figure(page, "orders-today"), figure(page, "trades-today")) == ("2", "2")
    assert attribute(page, "queued", "data-count") == "0"
    lag = attribute(page, "latest-lag", "data-seconds")
    assert lag is not None and 0 <= float(lag) < 60
    states = [
        (await client.get(f"/v1/trades/{t}", headers=bearer(trade["buyer"]))).json()["state"]
        for t in trades
    ]
    assert states == ["reserved", "reserved"]
    # Tomorrow (Beijing time) both are yesterday's.
    clock.advance(start_of_day(clock.now()) + timedelta(days=1, minutes=1) - clock.now())
    client.cookies.clear()
    await sign_in(client, trade["alice"])
    page = await dashboard(client)
    assert (figure(page, "orders-today"), figure(page, "trades-today")) == ("0", "0")


async def test_dead_letters_and_overdue_trades(client, market, settings, pool):
    events = await seeded(settings, pool, trades=3)
    forged = msgspec.structs.replace(events[0], price_fen=1)
    await publish_executed(settings, [forged])
    await enqueue_executed(settings, pool, events[1:2])
    async with worker(settings, pool, OffsetClock()) as w:
        js = w.platform.nats.jetstream()
        await js.publish(
            settings.subject("trade", "executed"), b"{not json", stream=settings.stream_name
        )
        await w.relay()
        # A stray client takes the enqueued trade's message and acknowledges it, settling
        # nothing; the two bad events are the worker's.
        taken = 0
        for message in await w.sub.fetch(3, timeout=5):
            if message.data != b"{not json" and forged.trade_id.encode() not in message.data:
                await message.ack()
                taken += 1
            else:
                await w.consumer.handle([message])
        assert taken == 1
        await asyncio.sleep(1.1)  # past the reconciler's bound (1 s here)
        found = await Reconciler(w.platform, after_seconds=1, grace=0).run_once()
        assert found.republished == [events[1].trade_id]
        await sign_in(client, market["alice"])
        page = await dashboard(client)
        assert attribute(page, "dead-letters", "data-count") == "2"
        assert attribute(page, "dead-letters", "data-unsettled") == "1"  # the forged trade
        assert attribute(page, "overdue", "data-count") == "1"
        assert "最久已等待" in figure(page, "overdue")
        assert await w.drain() == 1  # the republished event settles it
        assert (await Reconciler(w.platform, after_seconds=1, grace=0).run_once()).resolved == 1
    page = await dashboard(client)
    assert attribute(page, "overdue", "data-count") == "0"
    assert attribute(page, "dead-letters", "data-count") == "2"
    assert figure(page, "trades-today") == "1"
