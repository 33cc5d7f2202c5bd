"""Two exchanges, end to end: list once on A, recognised on B (一地上架,全国互认).

Each exchange has its own database, its own NATS and its own API process; B follows A through
A's signed listing feed. Timings are bounds the issue sets (within 5 s), not speed measurements.
"""

from __future__ import annotations

import uuid

import pytest

from tests.kit.documents import metadata
from tests.kit.market import Signer, order_body
from tests.kit.recognition import (
    credentialed_seller,
    list_on,
    ok,
    register,
    token,
    trust,
    two_exchanges,
    until,
)

STRICTER_RULE = """
[[rules]]
id = "NEG-09"
list = "negative"
scope = "product"
title_zh = "三级及以上一般数据不在本所交易"
title_en = "General data of grade 3 or higher is not traded here"
when = { field = "product.general_grade", gte = 3 }
explanation_zh = "本所暂不挂牌三级及以上一般数据"
explanation_en = "This exchange does not list general data of grade 3 or higher"
remedy_zh = "在本所不能交易"
remedy_en = "It cannot be traded on this exchange"
basis = "local exchange rule"
"""


@pytest.fixture
async def exchanges(settings, servers, tmp_path):
    async with two_exchanges(settings, servers.admin_database_url, tmp_path) as pair:
        yield pair


async def test_listed_on_a_recognised_on_b_ordered_and_suspended(exchanges):
    a, b = exchanges
    peer = await trust(b, a)
    assert peer["code"] == "SHDX" and peer["name"] == "上海示例数据交易所" and peer["trusted"]
    seller = await credentialed_seller(a, "91110000710925462X")

    product = await list_on(a, seller, metadata())
    code = product["product_code"]
    assert code.startswith("SHDX-")

    async def searchable_on_b() -> bool:
        page = (await b.http.get("/v1/products", params={"recognised_from": "SHDX"})).json()
        return any(item["product_code"] == code for item in page["items"])

    listed_after = await until(searchable_on_b)
    page = (
        await b.http.get("/v1/products", params={"q": "气象", "recognised_from": "SHDX"})
    ).json()
    (item,) = page["items"]
    assert item["recognised_from"] == "SHDX" and item["seller_name"] == "上海示例数据科技有限公司"
    assert (
        item["certificate"]
        == (await a.http.get(f"/v1/products/{product['id']}/certificate")).json()["jws"]
    )
    # Listed on B without a review case of B's.
    assert await b.pool.fetchval("SELECT count(*) FROM review_cases") == 0
    recognition = await ok(await b.http.get(f"/v1/recognitions/SHDX/{code}"))
    assert recognition["outcome"] == "recognised" and recognition["origin_state"] == "listed"
    assert recognition["revision"] == product["live"]["number"]

    # The seller was registered on B from its credential alone; its key came with it.
    seller_on_b = item["seller_org_id"]
    keys_on_b = await b.pool.fetch(
        "SELECT kid FROM org_keys WHERE org_id = $1", uuid.UUID(seller_on_b)
    )
    assert [row["kid"] for row in keys_on_b] == [seller["signer"].kid]

    # A buyer on B orders it as any local product; the contract names both exchanges.
    buyer_org = await register(b, "914403001922038216", ["buyer"], "深圳示例买方有限公司")
    buyer = await token(b, buyer_org["id"], ["buyer"])
    buyer_signer = Signer()
    key = await ok(
        await b.http.post("/v1/keys", json=buyer_signer.public, headers=b.headers(buyer)), 201
    )
    buyer_signer.kid = key["kid"]
    order = await ok(
        await b.http.post(
            "/v1/orders",
            json=order_body(item["product_id"]),
            headers={**b.headers(buyer), "Idempotency-Key": str(uuid.uuid4())},
        ),
        201,
    )
    assert order["state"] == "awaiting_signatures", order
    contract = await ok(
        await b.http.get(f"/v1/contracts/{order['contract_id']}", headers=b.headers(buyer))
    )
    document = contract["document"]
    assert document["exchange"]["code"] == "SZDX"
    assert document["origin_exchange"]["code"] == "SHDX"
    assert document["origin_exchange"]["listing_certificate"] == item["certificate"]
    assert "挂牌场所(互认):上海示例数据交易所(SHDX)" in contract["text_zh"]

    # The seller signs on B with the key its member credential carries.
    seller_token_on_b = await token(b, seller_on_b, ["seller"])
    signer = seller["signer"]
    await ok(
        await b.http.post(
            f"/v1/contracts/{order['contract_id']}/signatures",
            json={"jws": signer.detached(signer.kid, contract["digest"].encode())},
            headers=b.headers(seller_token_on_b),
        )
    )
    executed = await ok(
        await b.http.post(
            f"/v1/contracts/{order['contract_id']}/signatures",
            json={"jws": buyer_signer.detached(buyer_signer.kid, contract["digest"].encode())},
            headers=b.headers(buyer),
        )
    )
    assert executed["state"] == "executed"
    by_party = {s["party"]: s for s in executed["signatures"]}
    assert by_party["seller"]["kid"] == signer.kid
    assert seller["credential"]["claims"]["keys"]["keys"][0]["kid"] == signer.kid

    # A suspends it: B shows it suspended within 5 s and refuses new orders.
    reviewer = a.headers(seller["reviewer"])
    await ok(
        await a.http.post(
            f"/v1/products/{product['id']}/suspend", json={"reason": "来源争议"}, headers=reviewer
        )
    )

    async def suspended_on_b() -> bool:
        seen = (await b.http.get(f"/v1/recognitions/SHDX/{code}")).json()
        return bool(seen["origin_state"] == "suspended")

    suspended_after = await until(suspended_on_b)
    print(f"propagation A→B: listed {listed_after:.2f} s, suspended {suspended_after:.2f} s")
    assert not await searchable_on_b()
    state, reason = await b.pool.fetchrow(
        "SELECT state, suspended_reason FROM products WHERE product_code = $1", code
    )
    assert state == "suspended" and reason == "suspended by SHDX: 来源争议"
    refused = await b.http.post(
        "/v1/orders",
        json=order_body(item["product_id"]),
        headers={**b.headers(buyer), "Idempotency-Key": str(uuid.uuid4())},
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["mismatches"][0] == {
        "term": "product",
        "asked": "listed",
        "offered": "suspended",
    }

    # A reinstates: B lists it again, in order (the feed's sequence, not arrival, decides).
    await ok(
        await a.http.post(
            f"/v1/products/{product['id']}/reinstate", json={"reason": "已核实"}, headers=reviewer
        )
    )
    await until(searchable_on_b)


async def test_a_stricter_local_list_refuses_and_says_why_and_distrust_hides(exchanges):
    a, b = exchanges
    await trust(b, a)
    source = (await ok(await b.http.get("/v1/policy/lists/2026.1")))["source"].replace(
        'version = "2026.1"', 'version = "2026.2"'
    )
    published = await b.http.post(
        "/v1/policy/lists",
        json={"source": source + STRICTER_RULE},
        headers=b.headers(b.admin),
    )
    assert published.status_code == 201, published.text
    seller = await credentialed_seller(a, "9144030071526726XG")

    grade_3 = await list_on(a, seller, metadata(classification__general_grade=3))
    grade_2 = await list_on(a, seller, metadata(name_zh="城市交通流量数据"))

    async def both_seen() -> bool:
        seen = (await b.http.get("/v1/recognitions", params={"origin": "SHDX"})).json()
        return len(seen) == 2

    await until(both_seen)
    refused = await ok(await b.http.get(f"/v1/recognitions/SHDX/{grade_3['product_code']}"))
    assert refused["outcome"] == "refused" and refused["product_id"] is None
    (hit,) = refused["refusal"]["hits"]
    assert hit["rule"] == "NEG-09" and "grade 3" in hit["explanation_en"]
    assert refused["refusal"]["list_version"] == "2026.2"
    # The seller presenting the certificate itself gets the same answer, as a problem.
    certificate = (await a.http.get(f"/v1/products/{grade_3['id']}/certificate")).json()
    buyer_org = await register(b, "91440300708461136T", ["buyer"], "深圳示例买方有限公司")
    caller = await token(b, buyer_org["id"], ["buyer"])
    response = await b.http.post(
        "/v1/recognitions",
        json={
            "certificate": certificate["jws"],
            "metadata": grade_3["live"]["metadata"],
            "credential": seller["credential"]["jws"],
        },
        headers=b.headers(caller),
    )
    assert response.status_code == 422
    problem = response.json()
    assert problem["type"] == "urn:dataex:problem:recognition_refused_by_policy"
    assert [h["rule"] for h in problem["policy"]["hits"]] == ["NEG-09"]
    assert "NEG-09" in problem["detail"]
    # Searchable only the one B accepts.
    page = (await b.http.get("/v1/products", params={"recognised_from": "SHDX"})).json()
    assert [i["product_code"] for i in page["items"]] == [grade_2["product_code"]]
    audit = await b.pool.fetch(
        "SELECT action FROM audit_log WHERE subject_type = 'recognition' ORDER BY id"
    )
    assert [r["action"] for r in audit].count("recognition.refused_by_policy") == 2

    # Distrusting A hides its recognised products at once.
    removed = await ok(await b.http.delete("/v1/peers/SHDX", headers=b.headers(b.admin)))
    assert removed["trusted"] is False
    page = (await b.http.get("/v1/products", params={"recognised_from": "SHDX"})).json()
    assert page["items"] == []
    refused_order = await b.http.post(
        "/v1/orders",
        json=order_body(
            await b.pool.fetchval(
                "SELECT id::text FROM products WHERE product_code = $1", grade_2["product_code"]
            )
        ),
        headers={**b.headers(caller), "Idempotency-Key": str(uuid.uuid4())},
    )
    assert refused_order.status_code == 422
    # Trusted again: it is back, the refused one still refused.
    await trust(b, a)
    page = (await b.http.get("/v1/products", params={"recognised_from": "SHDX"})).json()
    assert [i["product_code"] for i in page["items"]] == [grade_2["product_code"]]
