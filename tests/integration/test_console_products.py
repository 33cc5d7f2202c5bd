"""The console's product pages over HTTP: staff find products in every state, read a product's
revisions, review case and certificate links, and suspend and reinstate it with a reason through
the listing service (checked through ``/v1``)."""

from __future__ import annotations

import re
import uuid
from typing import Any

from tests.kit.api import bearer
from tests.kit.console import csrf_of, hidden_fields, sign_in
from tests.kit.documents import metadata
from tests.kit.market import list_product, submit


async def listed(client, market, name_zh: str = "城市气象观测数据") -> dict[str, Any]:
    product_id = await list_product(client, market, metadata(name_zh=name_zh))
    response = await client.get(f"/v1/products/{product_id}", headers=bearer(market["seller"]))
    assert response.status_code == 200, response.text
    product: dict[str, Any] = response.json()
    return product


def rows(html: str) -> list[str]:
    """The product ids of the listing's rows, in order."""
    return re.findall(r'data-product="([0-9a-f-]{36})"', html)


async def test_staff_find_products_in_every_state_by_text_and_state(client, market):
    draft = await client.post(
        "/v1/products", json={"name_zh": "企业征信草稿"}, headers=bearer(market["seller"])
    )
    assert draft.status_code == 201, draft.text
    draft_id = draft.json()["id"]
    in_review = await submit(client, market["other"], metadata(name_zh="港口吞吐量月报"))
    product = await listed(client, market, "城市气象观测数据")
    await sign_in(client, market["alice"])

    page = await client.get("/console/products/")
    assert page.status_code == 200, page.text
    assert rows(page.text) == [product["id"], in_review["id"], draft_id]  # newest first
    assert "企业征信草稿" in page.text and "港口吞吐量月报" in page.text
    assert product["product_code"] in page.text
    assert "上海示例数据科技有限公司" in page.text  # the seller's name
    assert 'data-state="in_review"' in page.text and "审核中" in page.text

    by_state = await client.get("/console/products/", params={"state": "listed"})
    assert rows(by_state.text) == [product["id"]]
    by_name = await client.get("/console/products/", params={"q": "吞吐"})
    assert rows(by_name.text) == [in_review["id"]]
    by_code = await client.get("/console/products/", params={"q": product["product_code"].lower()})
    assert rows(by_code.text) == [product["id"]]
    both = await client.get("/console/products/", params={"q": "草稿", "state": "draft"})
    assert rows(both.text) == [draft_id]
    # A LIKE wildcard in the text is taken literally; an unknown state is ignored.
    assert rows((await client.get("/console/products/", params={"q": "%"})).text) == []
    assert len(rows((await client.get("/console/products/?state=bogus")).text)) == 3


async def test_the_listing_pages_by_fifty_with_a_next_link(client, market):
    ids = []
    for n in range(51):
        made = await client.post(
            "/v1/products", json={"name_zh": f"草稿{n:02d}"}, headers=bearer(market["seller"])
        )
        ids.append(made.json()["id"])
    await sign_in(client, market["bob"])
    first = await client.get("/console/products/", params={"state": "draft"})
    assert rows(first.text) == list(reversed(ids))[:50]
    link = re.search(r'<a href="([^"]+)" rel="next">', first.text)
    assert link is not None
    second = await client.get(link.group(1).replace("&amp;", "&"))
    assert rows(second.text) == [ids[0]]
    assert 'rel="next"' not in second.text


async def test_a_products_page_shows_its_state_review_and_certificate_links(client, market):
    product = await listed(client, market)
    await sign_in(client, market["bob"])
    page = await client.get(f"/console/products/{product['id']}")
    assert page.status_code == 200, page.text
    html = page.text
    assert "<h1>城市气象观测数据</h1>" in html
    assert 'id="product-state" data-state="listed"' in html
    assert 'data-prohibited="false"' in html
    assert 'data-revision="live"' in html and 'data-revision="pending"' not in html
    case_id = product["review"]["case_id"]
    assert f'href="/console/reviews/{case_id}"' in html
    certificate = f"/v1/products/{product['id']}/certificate"
    status = f"/v1/certificates/{product['product_code']}/status"
    assert f'href="{certificate}"' in html and f'href="{status}"' in html
    # The links are the public API's own: they answer without a token.
    assert (await client.get(certificate)).json()["product_code"] == product["product_code"]
    assert (await client.get(status)).json()["state"] == "listed"
    # A product still under review has no certificate yet, and a pending revision.
    in_review = await submit(client, market["other"], metadata(name_zh="港口吞吐量月报"))
    page = await client.get(f"/console/products/{in_review['id']}")
    assert 'data-revision="pending"' in page.text
    assert "/certificate" not in page.text and "产品未挂牌" in page.text
    missing = await client.get(f"/console/products/{uuid.uuid4()}")
    assert missing.status_code == 404


async def test_suspend_and_reinstate_with_a_reason_through_the_listing_service(
    client, market, admin_token
):
    product = await listed(client, market)
    product_id = product["id"]
    await sign_in(client, market["alice"])
    page = await client.get(f"/console/products/{product_id}")
    assert f'action="/console/products/{product_id}/suspend"' in page.text
    assert "/reinstate" not in page.text
    done = await client.post(
        f"/console/products/{product_id}/suspend",
        data={**hidden_fields(page.text), "reason": "  样本含未脱敏手机号  "},
        follow_redirects=False,
    )
    assert done.status_code == 303, done.text
    assert done.headers["location"] == f"/console/products/{product_id}"
    api = await client.get(f"/v1/products/{product_id}", headers=bearer(market["seller"]))
    assert api.json()["state"] == "suspended"
    assert api.json()["suspended_reason"] == "样本含未脱敏手机号"
    assert api.json()["suspended_by"] == "exchange"
    status = await client.get(f"/v1/certificates/{product['product_code']}/status")
    assert status.json()["state"] == "suspended"

    page = await client.get(f"/console/products/{product_id}")
    assert 'data-state="suspended"' in page.text
    assert '<dd id="suspended-reason">样本含未脱敏手机号</dd>' in page.text
    assert '/certificate"' not in page.text  # not listed: no certificate in force
    again = await client.post(
        f"/console/products/{product_id}/reinstate",
        data={**hidden_fields(page.text), "reason": "卖方已更换样本"},
    )
    assert again.status_code == 200, again.text  # followed the 303 to the page
    assert 'id="product-state" data-state="listed"' in again.text
    api = await client.get(f"/v1/products/{product_id}", headers=bearer(market["seller"]))
    assert api.json()["state"] == "listed" and api.json()["suspended_reason"] is None
    # The audit trail holds both, under the reviewer's own token, as the API's route writes it.
    me = (await client.get("/v1/me", headers=bearer(market["alice"]))).json()
    audit = (
        await client.get(
            "/v1/audit", params={"subject_id": product_id}, headers=bearer(admin_token)
        )
    ).json()["items"]
    actions = {e["action"]: e for e in audit}
    assert actions["product.suspend"]["actor_token_id"] == me["token_id"]
    assert actions["product.suspend"]["detail"]["reason"] == "样本含未脱敏手机号"
    assert actions["product.reinstate"]["detail"]["reason"] == "卖方已更换样本"
    assert "卖方已更换样本" in again.text  # the page's history shows it


async def test_a_form_without_csrf_or_reason_is_refused_and_the_services_problem_shown(
    client, market
):
    product = await listed(client, market)
    product_id = product["id"]
    await sign_in(client, market["alice"])
    refused = await client.post(
        f"/console/products/{product_id}/suspend", data={"reason": "无令牌"}
    )
    assert refused.status_code == 403 and "CSRF" in refused.text
    csrf = await csrf_of(client, f"/console/products/{product_id}")
    empty = await client.post(
        f"/console/products/{product_id}/suspend", data={"_csrf": csrf, "reason": "   "}
    )
    assert empty.status_code == 422
    assert 'data-code="invalid_input"' in empty.text and "<code>reason</code>" in empty.text
    # The listing service refuses: a listed product cannot be reinstated (409, its own words).
    wrong = await client.post(
        f"/console/products/{product_id}/reinstate", data={"_csrf": csrf, "reason": "试一下"}
    )
    assert wrong.status_code == 409
    assert "cannot reinstate a product that is listed" in wrong.text
    assert 'id="product-state" data-state="listed"' in wrong.text  # the page, re-rendered
    api = await client.get(f"/v1/products/{product_id}", headers=bearer(market["seller"]))
    assert api.json()["state"] == "listed"


async def test_the_product_pages_read_in_english(client, market):
    product = await listed(client, market)
    await sign_in(client, market["alice"])
    await client.get("/console/language", params={"to": "en", "next": "/console/products/"})
    listing = await client.get("/console/products/")
    assert (
        "Products in every state, newest first" in listing.text and "产品编码" not in listing.text
    )
    page = await client.get(f"/console/products/{product['id']}")
    assert "<h1>City weather observations</h1>" in page.text
    assert "Suspend the listing" in page.text
