"""The console's trade pages over HTTP: every trade for staff, a trade's order, contract,
settlement state, postings and ledger entries, its receipt, and resolving a buyer's objection
through the settlement service (checked through ``/v1``)."""

from __future__ import annotations

import re
import uuid

import pytest

from tests.kit.api import bearer, issue_token
from tests.kit.console import csrf_of, hidden_fields, sign_in
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


async def object_to(client, trade, trade_id: str, reason: str = "交付的数据缺少 2024 年") -> None:
    response = await client.post(
        f"/v1/trades/{trade_id}/objections", json={"reason": reason}, headers=bearer(trade["buyer"])
    )
    assert response.status_code == 200, response.text


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
    assert "买方未提出异议" in html and 'name="outcome"' not in html
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


async def test_staff_resolve_an_objection_for_the_buyer(client, trade, reserved, admin_token):
    await object_to(client, trade, reserved)
    await sign_in(client, trade["alice"])
    listing = await client.get("/console/trades/?state=disputed")
    assert trade_rows(listing.text) == [reserved]
    page = await client.get(f"/console/trades/{reserved}")
    assert '<blockquote id="objection-text" class="objection">交付的数据缺少 2024 年' in page.text
    assert 'id="outcome-buyer"' in page.text and 'id="outcome-seller"' in page.text
    done = await client.post(
        f"/console/trades/{reserved}/objection/resolution",
        data={**hidden_fields(page.text), "outcome": "buyer", "note": "卖方确认漏交"},
        follow_redirects=False,
    )
    assert done.status_code == 303, done.text
    assert done.headers["location"] == f"/console/trades/{reserved}"
    api = (await client.get(f"/v1/trades/{reserved}", headers=bearer(trade["buyer"]))).json()
    assert api["state"] == "voided"
    money = (await client.get("/v1/accounts/me", headers=bearer(trade["buyer"]))).json()
    assert (money["available_fen"], money["escrow_fen"]) == (PRICE + FEE, 0)
    page = await client.get(f"/console/trades/{reserved}")
    assert 'id="settlement-state" data-state="voided"' in page.text
    assert 'name="outcome"' not in page.text and "异议已处理" in page.text
    assert "卖方确认漏交" in page.text  # the history
    me = (await client.get("/v1/me", headers=bearer(trade["alice"]))).json()
    audit = (
        await client.get(
            "/v1/audit",
            params={"subject_id": reserved, "action": "trade.objection_resolved"},
            headers=bearer(admin_token),
        )
    ).json()["items"]
    assert [(e["actor_token_id"], e["detail"]["outcome"]) for e in audit] == [
        (me["token_id"], "buyer")
    ]


async def test_a_resolution_is_refused_without_csrf_a_note_or_the_reviewer_role(
    client, trade, reserved, admin_token
):
    await object_to(client, trade, reserved)
    await sign_in(client, trade["alice"])
    path = f"/console/trades/{reserved}/objection/resolution"
    refused = await client.post(path, data={"outcome": "seller", "note": "无令牌"})
    assert refused.status_code == 403 and "CSRF" in refused.text
    csrf = await csrf_of(client, f"/console/trades/{reserved}")
    no_note = await client.post(path, data={"_csrf": csrf, "outcome": "seller", "note": " "})
    assert no_note.status_code == 422 and "<code>note</code>" in no_note.text
    assert 'data-state="disputed"' in no_note.text  # the page again, the form still there
    # An admin without the reviewer role: the API route needs it, so the console does too.
    operator = (await client.get("/v1/me", headers=bearer(admin_token))).json()["organisation"]
    admin_only = await issue_token(client, admin_token, operator["id"], ["admin"])
    client.cookies.clear()
    await sign_in(client, admin_only)
    page = await client.get(f"/console/trades/{reserved}")
    assert page.status_code == 200 and 'name="outcome"' not in page.text
    assert "需要审核员角色" in page.text
    csrf = hidden_fields(page.text)["_csrf"]
    forbidden = await client.post(path, data={"_csrf": csrf, "outcome": "seller", "note": "x"})
    assert forbidden.status_code == 403
    assert "needs the role reviewer" in forbidden.text
    api = (await client.get(f"/v1/trades/{reserved}", headers=bearer(trade["buyer"]))).json()
    assert api["state"] == "disputed"
    # Resolved once by a reviewer, a second resolution is the service's own 409.
    client.cookies.clear()
    await sign_in(client, trade["bob"])
    csrf = await csrf_of(client, f"/console/trades/{reserved}")
    first = await client.post(path, data={"_csrf": csrf, "outcome": "seller", "note": "已核对"})
    assert first.status_code == 200 and 'data-state="settled"' in first.text
    second = await client.post(path, data={"_csrf": csrf, "outcome": "buyer", "note": "再来"})
    assert second.status_code == 409
    assert "cannot resolve for buyer a trade that is settled" in second.text
    seller = (await client.get("/v1/accounts/me", headers=bearer(trade["seller"]))).json()
    assert seller["available_fen"] == PRICE


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
