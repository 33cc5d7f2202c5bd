"""The console's trade pages over HTTP: every trade for staff, a trade's order, contract,
settlement state, postings and ledger entries, its receipt, and a trade a dispute holds and then
splits (disputes replaced objections, issue 21)."""

from __future__ import annotations

import re
import uuid

import pytest

from tests.kit.api import bearer
from tests.kit.console import sign_in
from tests.kit.market import auto_accept_product, buy, deposit
from tests.kit.settlement import enqueue_executed, seeded, worker

PRICE = 1_000_000  # the 'std' plan: ¥10,000.00
FEE = 10_000  # 1 %: ¥100.00


@pytest.fixture
async def reserved(client, trade, admin_token, settings, pool, clock) -> str:
    """A trade the settlement worker has reserved into escrow; its id."""
    product_id = await auto_accept_product(client, trade)
    response = await deposit(client, admin_token, trade["buyer_org"]["id"], PRICE + FEE, "bank-c")
    assert response.status_code == 201, response.text
    trade_id = await buy(client, trade, product_id)
    async with worker(settings, pool, clock) as w:
        assert await w.drain() == 1
    return trade_id


def trade_rows(html: str) -> list[str]:
    return re.findall(r'data-trade="([0-9a-f-]{36})"', html)


async def test_staff_see_every_trade_with_its_parties_and_price_in_yuan(client, trade, reserved):
    await sign_in(client, trade["alice"])
    page = await client.get("/console/trades/")
    assert page.status_code == 200, page.text
    assert trade_rows(page.text) == [reserved]
    row = page.text[page.text.index(f'data-trade="{reserved}"') :]
    assert 'data-state="reserved"' in row[:200]
    assert "城市气象观测数据" in row and "上海示例数据科技有限公司" in row
    assert f'data-fen="{PRICE}">¥10,000.00<' in row
    assert f'href="/console/trades/{reserved}"' in row
    assert trade_rows((await client.get("/console/trades/?state=reserved")).text) == [reserved]
    assert trade_rows((await client.get("/console/trades/?state=disputed")).text) == []
    # The API keeps trades to their parties; only the console shows staff every trade.
    api = await client.get(f"/v1/trades/{reserved}", headers=bearer(trade["alice"]))
    assert api.status_code == 404


async def test_a_trades_page_shows_order_contract_settlement_postings_and_ledger(
    client, trade, reserved
):
    await sign_in(client, trade["bob"])
    page = await client.get(f"/console/trades/{reserved}")
    assert page.status_code == 200, page.text
    html = page.text
    assert 'id="settlement-state" data-state="reserved"' in html
    assert 'id="order-state" data-state="executed"' in html
    assert 'id="contract-state" data-state="executed"' in html
    assert 'id="price" data-fen="1000000">¥10,000.00<' in html
    assert 'data-account="buyer.available" data-fen="-1010000"' in html
    assert 'data-account="buyer.escrow" data-fen="1010000"' in html
    assert "-¥10,100.00" in html and "买方冻结款" in html
    view = (await client.get(f"/v1/trades/{reserved}", headers=bearer(trade["buyer"]))).json()
    for seq in view["ledger_seqs"]:
        assert f'data-seq="{seq}" data-step="reserved"' in html
    # Disputes replaced objections: no objection form or route on a trade's page (the
    # navigation's "/console/objections" is the listings' objections to a registration).
    assert 'name="outcome"' not in html and "/objection" not in html.replace(
        '"/console/objections"', ""
    )
    assert f'href="/console/trades/{reserved}/receipt"' in html


async def test_the_receipt_downloads_as_the_parties_get_it(client, trade, reserved):
    await sign_in(client, trade["alice"])
    download = await client.get(f"/console/trades/{reserved}/receipt")
    assert download.status_code == 200, download.text
    assert download.headers["content-type"].startswith("application/json")
    assert download.headers["content-disposition"] == (
        f'attachment; filename="receipt-{reserved}.json"'
    )
    assert download.headers["cache-control"] == "no-store"
    buyers = await client.get(f"/v1/trades/{reserved}/receipt", headers=bearer(trade["buyer"]))
    assert buyers.status_code == 200
    assert download.content == buyers.content  # the same service call, the same bytes
    assert download.json()["entries"]
    missing = await client.get(f"/console/trades/{uuid.uuid4()}/receipt")
    assert missing.status_code == 404


async def test_a_trade_a_dispute_holds_is_listed_and_its_split_shows_in_its_postings(
    client, trade, reserved, settings, pool, clock
):
    trade_id, dispute = uuid.UUID(reserved), uuid.uuid4()
    async with worker(settings, pool, clock) as w:
        async with pool.acquire() as conn, conn.transaction():
            await w.service.disputes.hold(conn, trade_id, dispute, clock.now(), None)
        await sign_in(client, trade["alice"])
        listing = await client.get("/console/trades/?state=disputed")
        assert trade_rows(listing.text) == [reserved]
        assert "款项冻结" in listing.text
        page = await client.get(f"/console/trades/{reserved}")
        assert 'id="settlement-state" data-state="disputed"' in page.text
        refund = (PRICE + FEE) // 2  # 505,000 of 1,010,000: fee kept 5,000, seller 500,000
        async with pool.acquire() as conn, conn.transaction():
            outcome = await w.service.disputes.resolve(
                conn, trade_id, dispute, refund, (), clock.now(), None
            )
    assert (outcome.state, outcome.refund_fen, outcome.seller_fen, outcome.fee_fen) == (
        "split", 505_000, 500_000, 5_000)  # fmt: skip
    page = await client.get(f"/console/trades/{reserved}")
    html = page.text
    assert 'id="settlement-state" data-state="split"' in html and "按争议裁决分割" in html
    assert 'data-account="buyer.escrow" data-fen="-1010000"' in html
    assert 'data-account="buyer.available" data-fen="505000"' in html
    assert 'data-account="seller.available" data-fen="500000"' in html
    assert 'data-account="exchange.fee_revenue" data-fen="5000"' in html
    assert f'data-seq="{outcome.ledger_seq}" data-step="split"' in html
    assert trade_rows((await client.get("/console/trades/?state=split")).text) == [reserved]


async def test_an_unknown_trade_is_not_found(client, trade):
    await sign_in(client, trade["alice"])
    missing = await client.get(f"/console/trades/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert 'data-code="not_found"' in missing.text


async def test_the_trade_list_pages_by_fifty_newest_first(client, market, settings, pool, clock):
    events = await seeded(settings, pool, trades=51)
    await enqueue_executed(settings, pool, events)
    async with worker(settings, pool, clock) as w:
        assert await w.drain() == 51
    await sign_in(client, market["alice"])
    first = await client.get("/console/trades/", params={"state": "reserved"})
    assert len(trade_rows(first.text)) == 50
    link = re.search(r'<a href="([^"]+)" rel="next">', first.text)
    assert link is not None and "state=reserved" in link.group(1)
    second = await client.get(link.group(1).replace("&amp;", "&"))
    seen = trade_rows(first.text) + trade_rows(second.text)
    assert sorted(seen) == sorted(e.trade_id for e in events)  # each once
    assert 'rel="next"' not in second.text


async def test_a_trade_the_worker_has_not_taken_yet_shows_its_order_and_contract(
    client, trade, admin_token
):
    product_id = await auto_accept_product(client, trade)
    await deposit(client, admin_token, trade["buyer_org"]["id"], PRICE + FEE, "bank-p")
    trade_id = await buy(client, trade, product_id)  # executed; no settlement worker runs
    await sign_in(client, trade["alice"])
    page = await client.get(f"/console/trades/{trade_id}")
    assert page.status_code == 200, page.text
    assert 'id="settlement-state" data-state="pending"' in page.text
    assert 'id="contract-state" data-state="executed"' in page.text
    assert "结算服务尚未处理这笔交易" in page.text
    assert "/receipt" not in page.text
