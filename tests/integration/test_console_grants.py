"""The console's grant pages over HTTP: the list and a grant's page from real grants, suspend
and resume through the grant service (checked through ``/v1/grants``), their refusals, and
usage per product and per buyer from real usage records."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from exchange.delivery.quota import LeaseBook
from exchange.delivery.usage import UsageRecord, UsageRecorder
from exchange.platform.metering import Dimension
from tests.kit.api import bearer
from tests.kit.console import csrf_of, hidden_fields, sign_in
from tests.kit.delivery import active_grant, executed, grant_service
from tests.kit.market import listed_product

REQUESTS = Dimension("requests", unit_price_millifen=1500, quota=100)


async def _grant(pool, grants, product, buyer_org, seller_org, **kw) -> uuid.UUID:
    data = executed(
        product_id=product["id"], product_code=product["product_code"], buyer_org=buyer_org,
        seller_org=seller_org, dimensions=[REQUESTS], **kw,
    )  # fmt: skip
    return await active_grant(pool, grants, data)


async def _serve(pool, grants, grant_id: uuid.UUID, calls: int) -> None:
    """``calls`` requests served and recorded as the gateway records them (lease, record)."""
    book = LeaseBook(pool, on_exhausted=grants.exhausted)
    recorder = UsageRecorder(pool)
    try:
        for _ in range(calls):
            taken = await book.take(grant_id, {"requests": 1})
            try:
                await recorder.record(UsageRecord(
                    id=uuid.uuid4(), grant_id=grant_id, served_at=datetime.now(UTC),
                    units={"requests": 1}, leases=list(taken.values()), cost_millifen=1500,
                    detail={},
                ))  # fmt: skip
            finally:
                await book.done(grant_id, taken)
    finally:
        await book.close()
        await recorder.stop()


async def _v1(client, admin_token, grant_id) -> dict[str, Any]:
    response = await client.get(f"/v1/grants/{grant_id}", headers=bearer(admin_token))
    assert response.status_code == 200, response.text
    grant: dict[str, Any] = response.json()
    return grant


async def _setup(client, trade, pool, clock, settings) -> dict[str, Any]:
    product = await listed_product(client, trade)
    grants = grant_service(pool, clock, settings)
    grant_id = await _grant(pool, grants, product, trade["buyer_org"], trade["seller_org"])
    return {"product": product, "grants": grants, "grant_id": grant_id}


async def test_the_list_and_the_grant_page_show_real_grants(
    client, trade, pool, clock, settings, admin_token
):
    setup = await _setup(client, trade, pool, clock, settings)
    grant_id, product = setup["grant_id"], setup["product"]
    await _serve(pool, setup["grants"], grant_id, 3)
    await sign_in(client, trade["alice"])
    page = await client.get("/console/grants/")
    assert page.status_code == 200, page.text
    assert f'data-grant="{grant_id}" data-state="active"' in page.text
    assert product["product_code"] in page.text
    assert "生效中" in page.text and "接口" in page.text  # state and mode, in Chinese
    assert "3 / 100" in page.text  # quota used of limit
    filtered = await client.get("/console/grants/", params={"state": "suspended"})
    assert str(grant_id) not in filtered.text and "没有符合条件的授权" in filtered.text
    by_buyer = await client.get("/console/grants/", params={"buyer": trade["buyer_org"]["id"]})
    assert f'data-grant="{grant_id}"' in by_buyer.text
    other = await client.get("/console/grants/", params={"buyer": str(uuid.uuid4())})
    assert f'data-grant="{grant_id}"' not in other.text

    detail = await client.get(f"/console/grants/{grant_id}")
    assert detail.status_code == 200
    assert 'data-records="3"' in detail.text
    assert trade["buyer_org"]["id"] in detail.text and trade["seller_org"]["id"] in detail.text
    # A reviewer sees the grant but not the admins' forms.
    assert "只有管理员可以暂停或恢复授权" in detail.text
    assert f"/console/grants/{grant_id}/suspend" not in detail.text


async def test_an_admin_suspends_and_resumes_a_grant_as_the_api_does(
    client, trade, pool, clock, settings, admin_token
):
    setup = await _setup(client, trade, pool, clock, settings)
    grant_id = setup["grant_id"]
    await sign_in(client, admin_token)
    page = await client.get(f"/console/grants/{grant_id}")
    assert f"/console/grants/{grant_id}/suspend" in page.text
    fields = hidden_fields(page.text)
    done = await client.post(
        f"/console/grants/{grant_id}/suspend",
        data={**fields, "reason": "买方投诉核查中"},
        follow_redirects=False,
    )
    assert done.status_code == 303, done.text
    assert done.headers["location"] == f"/console/grants/{grant_id}"
    grant = await _v1(client, admin_token, grant_id)
    assert (grant["state"], grant["suspended_by"], grant["reason"]) == (
        "suspended",
        ["exchange"],
        "买方投诉核查中",
    )
    shown = await client.get(f"/console/grants/{grant_id}")
    assert 'data-state="suspended"' in shown.text and "交易所工作人员暂停" in shown.text
    assert f"/console/grants/{grant_id}/resume" in shown.text

    resumed = await client.post(
        f"/console/grants/{grant_id}/resume", data=hidden_fields(shown.text), follow_redirects=False
    )
    assert resumed.status_code == 303
    assert (await _v1(client, admin_token, grant_id))["state"] == "active"
    # Audited as the API audits them, under the admin's own token.
    me = (await client.get("/v1/me", headers=bearer(admin_token))).json()
    audit = (
        await client.get(
            "/v1/audit",
            params={"subject_type": "grant", "subject_id": str(grant_id)},
            headers=bearer(admin_token),
        )
    ).json()["items"]
    mine = [e["action"] for e in audit if e["actor_token_id"] == me["token_id"]]
    assert mine == ["grant.resumed", "grant.suspended"]


async def test_suspending_needs_a_reason_and_the_csrf_token(
    client, trade, pool, clock, settings, admin_token
):
    setup = await _setup(client, trade, pool, clock, settings)
    grant_id = setup["grant_id"]
    await sign_in(client, admin_token)
    csrf = await csrf_of(client, f"/console/grants/{grant_id}")
    blank = await client.post(
        f"/console/grants/{grant_id}/suspend", data={"_csrf": csrf, "reason": "   "}
    )
    assert blank.status_code == 422
    assert "a reason is needed to suspend a grant" in blank.text
    forged = await client.post(f"/console/grants/{grant_id}/suspend", data={"reason": "核查"})
    assert forged.status_code == 403 and "CSRF" in forged.text
    assert (await _v1(client, admin_token, grant_id))["state"] == "active"


async def test_a_reviewer_may_not_suspend_and_resuming_an_active_grant_is_refused(
    client, trade, pool, clock, settings, admin_token
):
    setup = await _setup(client, trade, pool, clock, settings)
    grant_id = setup["grant_id"]
    await sign_in(client, trade["alice"])
    csrf = await csrf_of(client, f"/console/grants/{grant_id}")
    refused = await client.post(
        f"/console/grants/{grant_id}/suspend", data={"_csrf": csrf, "reason": "核查"}
    )
    assert refused.status_code == 403
    assert "this route needs one of the roles admin" in refused.text
    assert (await _v1(client, admin_token, grant_id))["state"] == "active"

    client.cookies.clear()
    await sign_in(client, admin_token)
    csrf = await csrf_of(client, f"/console/grants/{grant_id}")
    conflict = await client.post(f"/console/grants/{grant_id}/resume", data={"_csrf": csrf})
    assert conflict.status_code == 409
    assert f"grant {grant_id} is not suspended by exchange" in conflict.text


async def test_usage_per_product_and_per_buyer(client, trade, pool, clock, settings):
    setup = await _setup(client, trade, pool, clock, settings)
    grants, product = setup["grants"], setup["product"]
    buyer, seller = trade["buyer_org"], trade["seller_org"]  # the seller's org buys too
    second = await _grant(pool, grants, product, seller, seller)
    # A grant of another product (grants keep their product's id and code, not a reference).
    other = {"id": str(uuid.uuid4()), "product_code": "DX-2026-999999Z"}
    third = await _grant(pool, grants, other, buyer, seller)
    await _serve(pool, grants, setup["grant_id"], 3)
    await _serve(pool, grants, second, 1)
    await _serve(pool, grants, third, 2)
    await sign_in(client, trade["alice"])

    per_product = await client.get("/console/grants/usage", params={"by": "product"})
    assert per_product.status_code == 200, per_product.text
    assert f'data-key="{product["id"]}" data-records="4"' in per_product.text
    assert f'data-key="{other["id"]}" data-records="2"' in per_product.text
    assert "¥0.060" in per_product.text  # 4 calls at 1,500 milli-fen: 6 fen
    per_buyer = await client.get("/console/grants/usage", params={"by": "buyer"})
    assert f'data-key="{buyer["id"]}" data-records="5"' in per_buyer.text
    assert f'data-key="{seller["id"]}" data-records="1"' in per_buyer.text
    assert buyer["uscc"] in per_buyer.text
    assert "按买方统计用量" in per_buyer.text


async def test_the_grant_list_is_keyset_paged_newest_first(client, trade, pool, clock, settings):
    grants = grant_service(pool, clock, settings)
    product = {"id": str(uuid.uuid4()), "product_code": "DX-2026-999998Z"}
    made = [
        await _grant(pool, grants, product, trade["buyer_org"], trade["seller_org"])
        for _ in range(51)
    ]
    await sign_in(client, trade["alice"])
    first = await client.get("/console/grants/", params={"product_code": "DX-2026-999998Z"})
    shown = [part.split('"')[0] for part in first.text.split('data-grant="')[1:]]
    assert len(shown) == 50
    next_link = first.text.split('rel="next"')[0].rsplit('href="', 1)[1].split('"')[0]
    assert "product_code=DX-2026-999998Z" in next_link
    second = await client.get(next_link.replace("&amp;", "&"))
    shown += [part.split('"')[0] for part in second.text.split('data-grant="')[1:]]
    assert shown == [str(g) for g in reversed(made)]
    assert 'rel="next"' not in second.text
