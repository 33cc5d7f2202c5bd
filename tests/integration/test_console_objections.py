"""The console's objection pages over HTTP: staff list objections to registrations (awaiting a
decision, decided, all), read one with its claim, statement, evidence and the product as it
stands, suspend the listing pending the decision and decide it, through the objection service
(checked through ``/v1``); the product's page lists its objections."""

from __future__ import annotations

import re
import uuid
from typing import Any

from exchange import wiring
from exchange.listings.objections import ObjectionService
from exchange.platform.signing import KeyRing, load_master_key
from tests.kit.api import bearer, issue_token
from tests.kit.console import csrf_of, hidden_fields, sign_in
from tests.kit.documents import metadata
from tests.kit.market import list_product

STATEMENT = "本公司为该数据集的原始采集方 持有全部权利 内部编号 ZX-7731"
DIGEST = "ab" * 32


async def _object(client, product_id: str, token: str, claim: str = "ownership") -> dict[str, Any]:
    response = await client.post(
        f"/v1/products/{product_id}/objections",
        json={"claim": claim, "statement": STATEMENT, "evidence_sha256": [DIGEST]},
        headers=bearer(token),
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def _product(client, market, product_id: str) -> dict[str, Any]:
    response = await client.get(f"/v1/products/{product_id}", headers=bearer(market["alice"]))
    body: dict[str, Any] = response.json()
    return body


def _service(pool, clock, settings) -> ObjectionService:
    keyring = KeyRing(load_master_key(settings.state_dir))
    return ObjectionService(wiring.listings(pool, clock, settings, keyring))


def rows(html: str) -> list[str]:
    """The objection ids of the list's rows, in order."""
    return re.findall(r'<tr id="objection-[0-9a-f-]{36}" data-objection="([0-9a-f-]{36})"', html)


async def test_staff_list_objections_awaiting_decided_and_all_oldest_first(client, market):
    first = await list_product(client, market)
    second = await list_product(
        client, market, metadata(name_zh="港口吞吐量月报"), seller=market["other"]
    )
    early = await _object(client, first, market["other"])
    late = await _object(client, second, market["seller"], claim="trade_secret")
    decided = await client.post(
        f"/v1/listing-objections/{early['id']}/decision",
        json={"outcome": "dismissed", "reason": "权属证明不足"},
        headers=bearer(market["bob"]),
    )
    assert decided.status_code == 200, decided.text
    await sign_in(client, market["alice"])

    page = await client.get("/console/objections/")
    assert page.status_code == 200, page.text
    assert rows(page.text) == [late["id"]]  # awaiting a decision by default
    assert "商业秘密" in page.text and late["product_code"] in page.text
    assert f'href="/console/products/{second}"' in page.text
    assert f'href="/console/objections/{late["id"]}"' in page.text
    assert 'data-held="false"' in page.text
    assert 'class="age age-fresh"' in page.text

    done = await client.get("/console/objections/", params={"state": "decided"})
    assert rows(done.text) == [early["id"]]
    assert "驳回" in done.text
    everything = await client.get("/console/objections/", params={"state": "all"})
    assert rows(everything.text) == [early["id"], late["id"]]  # oldest first
    # One product's, and a filter that is not one is the default.
    one = await client.get("/console/objections/", params={"state": "all", "product": first})
    assert rows(one.text) == [early["id"]]
    assert rows((await client.get("/console/objections/?state=bogus")).text) == [late["id"]]
    # The navigation links the list.
    assert 'href="/console/objections"' in (await client.get("/console/")).text


async def test_the_list_pages_by_fifty_with_a_next_link(client, market, pool, clock, settings):
    objections = _service(pool, clock, settings)
    product_id = await list_product(client, market)
    made = [(await _object(client, product_id, market["other"]))["id"]]
    # One open objection per organisation and product: decide each before the next.
    for _ in range(50):
        await client.post(
            f"/v1/listing-objections/{made[-1]}/decision",
            json={"outcome": "dismissed", "reason": "不成立"},
            headers=bearer(market["bob"]),
        )
        made.append((await _object(client, product_id, market["other"]))["id"])
    assert len(await objections.find(state="dismissed", after=None, limit=100)) == 50
    await sign_in(client, market["alice"])
    first = await client.get("/console/objections/", params={"state": "all"})
    assert rows(first.text) == made[:50]
    link = re.search(r'<a href="([^"]+)" rel="next">', first.text)
    assert link is not None
    second = await client.get(link.group(1).replace("&amp;", "&"))
    assert rows(second.text) == [made[50]]
    assert 'rel="next"' not in second.text


async def test_find_filters_by_product_and_by_several_states(client, market, pool, clock, settings):
    objections = _service(pool, clock, settings)
    first = await list_product(client, market)
    second = await list_product(
        client, market, metadata(name_zh="港口吞吐量月报"), seller=market["other"]
    )
    a = await _object(client, first, market["other"])
    b = await _object(client, second, market["seller"])
    ids = [o.id for o in await objections.find(state=None, after=None, limit=10)]
    assert ids == [uuid.UUID(a["id"]), uuid.UUID(b["id"])]
    only = await objections.find(state=None, after=None, limit=10, product_id=uuid.UUID(second))
    assert [o.id for o in only] == [uuid.UUID(b["id"])]
    both = await objections.find(state=("upheld", "dismissed"), after=None, limit=10)
    assert both == []
    open_ = await objections.find(
        state=("registered",), after=None, limit=10, product_id=uuid.UUID(first)
    )
    assert [o.id for o in open_] == [uuid.UUID(a["id"])]


async def test_an_objections_page_shows_claim_statement_evidence_and_the_product(client, market):
    product_id = await list_product(client, market)
    objection = await _object(client, product_id, market["other"])
    await sign_in(client, market["alice"])
    page = await client.get(f"/console/objections/{objection['id']}")
    assert page.status_code == 200, page.text
    html = page.text
    assert 'id="objection-state" data-state="registered"' in html
    assert 'data-claim="ownership"' in html and "数据权属" in html
    assert STATEMENT in html
    assert f'<code class="wrap">{DIGEST}</code>' in html
    assert "上海示例数据科技有限公司" in html  # the seller's name
    assert objection["claimant_org_id"][:8] in html  # the claimant, which staff may see
    assert 'id="product-state" data-state="listed"' in html
    assert f'href="/console/products/{product_id}"' in html
    assert f'action="/console/objections/{objection["id"]}/suspend"' in html
    assert f'action="/console/objections/{objection["id"]}/decide"' in html
    assert "尚未决定" in html
    # The product's page lists it.
    product_page = await client.get(f"/console/products/{product_id}")
    assert f'href="/console/objections/{objection["id"]}"' in product_page.text
    assert 'data-state="registered"' in product_page.text
    # In English too.
    await client.get("/console/language", params={"to": "en", "next": "/console/"})
    english = await client.get(f"/console/objections/{objection['id']}")
    assert "The claimant&#39;s statement" in english.text
    assert "Suspend the listing pending the decision" in english.text
    missing = await client.get(f"/console/objections/{uuid.uuid4()}")
    assert missing.status_code == 404


async def test_suspending_through_the_console_then_dismissing_reinstates_the_listing(
    client, market, admin_token
):
    product_id = await list_product(client, market)
    objection = await _object(client, product_id, market["other"])
    objection_id = objection["id"]
    await sign_in(client, market["alice"])
    page = await client.get(f"/console/objections/{objection_id}")
    done = await client.post(
        f"/console/objections/{objection_id}/suspend",
        data={**hidden_fields(page.text), "reason": "  权属争议核查中  "},
        follow_redirects=False,
    )
    assert done.status_code == 303, done.text
    assert done.headers["location"] == f"/console/objections/{objection_id}?done=suspended"
    product = await _product(client, market, product_id)
    assert product["state"] == "suspended" and product["suspended_by"] == "objection"
    assert product["suspended_reason"] == "权属争议核查中"
    api = await client.get(
        f"/v1/listing-objections/{objection_id}", headers=bearer(market["alice"])
    )
    assert api.json()["suspended_listing"] is True

    page = await client.get(done.headers["location"])
    assert 'id="done" data-done="suspended"' in page.text
    assert 'id="held" data-held="true"' in page.text
    assert 'id="suspended-by" data-suspended-by="objection"' in page.text
    assert "/suspend" not in page.text  # it holds the listing already
    # Suspending twice is the service's 409, shown on the page.
    again = await client.post(
        f"/console/objections/{objection_id}/suspend",
        data={**hidden_fields(page.text), "reason": "再次暂停"},
    )
    assert again.status_code == 409 and 'data-code="conflict"' in again.text
    assert "holds the listing suspended already" in again.text

    dismissed = await client.post(
        f"/console/objections/{objection_id}/decide",
        data={**hidden_fields(page.text), "outcome": "dismissed", "reason": "权属证明不足"},
    )
    assert dismissed.status_code == 200, dismissed.text  # followed the 303
    assert 'data-done="dismissed"' in dismissed.text
    assert 'id="outcome" data-outcome="dismissed"' in dismissed.text
    assert '<dd id="decision-reason">权属证明不足</dd>' in dismissed.text
    assert 'id="product-state" data-state="listed"' in dismissed.text
    assert f'action="/console/objections/{objection_id}/decide"' not in dismissed.text
    product = await _product(client, market, product_id)
    assert product["state"] == "listed" and product["suspended_by"] is None
    status = await client.get(f"/v1/certificates/{product['product_code']}/status")
    [public] = status.json()["objections"]
    assert public["outcome"] == "dismissed" and public["decision_reason"] == "权属证明不足"
    # Who decided: the reviewer's own token, as the API's route records it.
    me = (await client.get("/v1/me", headers=bearer(market["alice"]))).json()
    assert me["token_id"] in dismissed.text.split('id="decided-by"')[1].split("</dd>")[0]
    audit = (
        await client.get(
            "/v1/audit", params={"subject_id": objection_id}, headers=bearer(admin_token)
        )
    ).json()["items"]
    actions = {e["action"]: e for e in audit}
    assert actions["listing_objection.dismissed"]["actor_token_id"] == me["token_id"]
    assert actions["listing_objection.suspended_listing"]["actor_token_id"] == me["token_id"]


async def test_upholding_keeps_the_listing_suspended_and_an_admin_cannot_suspend(
    client, market, admin_token
):
    product_id = await list_product(client, market)
    objection = await _object(client, product_id, market["other"])
    objection_id = objection["id"]
    # An admin decides but does not suspend (as `POST .../suspension` needs a reviewer).
    operator = (await client.get("/v1/me", headers=bearer(admin_token))).json()["organisation"]
    admin = await issue_token(client, admin_token, operator["id"], ["admin"])
    await sign_in(client, admin)
    page = await client.get(f"/console/objections/{objection_id}")
    assert f'action="/console/objections/{objection_id}/suspend"' not in page.text
    assert "只有审核员" in page.text
    refused = await client.post(
        f"/console/objections/{objection_id}/suspend",
        data={**hidden_fields(page.text), "reason": "暂停"},
    )
    assert refused.status_code == 403 and "reviewer" in refused.text
    assert (await _product(client, market, product_id))["state"] == "listed"
    held = await client.post(
        f"/v1/listing-objections/{objection_id}/suspension",
        json={"reason": "权属争议核查中"},
        headers=bearer(market["alice"]),
    )
    assert held.status_code == 200, held.text

    upheld = await client.post(
        f"/console/objections/{objection_id}/decide",
        data={**hidden_fields(page.text), "outcome": "upheld", "reason": "异议人提交了采集合同"},
        follow_redirects=False,
    )
    assert upheld.status_code == 303
    assert upheld.headers["location"] == f"/console/objections/{objection_id}?done=upheld"
    api = await client.get(f"/v1/listing-objections/{objection_id}", headers=bearer(admin))
    assert api.json()["outcome"] == "upheld"
    product = await _product(client, market, product_id)  # still suspended, now as the staff's
    assert product["state"] == "suspended" and product["suspended_by"] == "exchange"
    # Decided once: a second decision is the service's 409.
    again = await client.post(
        f"/console/objections/{objection_id}/decide",
        data={**hidden_fields(page.text), "outcome": "dismissed", "reason": "改判"},
    )
    assert again.status_code == 409 and 'data-status="409"' in again.text
    assert 'id="outcome" data-outcome="upheld"' in again.text  # the page, re-rendered


async def test_forms_without_csrf_or_with_bad_input_are_refused(client, market):
    product_id = await list_product(client, market)
    objection = await _object(client, product_id, market["other"])
    objection_id = objection["id"]
    await sign_in(client, market["alice"])
    for action, data in (
        ("suspend", {"reason": "无令牌"}),
        ("decide", {"outcome": "dismissed", "reason": "无令牌"}),
    ):
        refused = await client.post(f"/console/objections/{objection_id}/{action}", data=data)
        assert refused.status_code == 403 and "CSRF" in refused.text, action
    csrf = await csrf_of(client, f"/console/objections/{objection_id}")
    empty = await client.post(
        f"/console/objections/{objection_id}/suspend", data={"_csrf": csrf, "reason": "  "}
    )
    assert empty.status_code == 422
    assert 'data-code="invalid_input"' in empty.text and "<code>reason</code>" in empty.text
    wrong = await client.post(
        f"/console/objections/{objection_id}/decide",
        data={"_csrf": csrf, "outcome": "maybe", "reason": "理由"},
    )
    assert wrong.status_code == 422 and "<code>outcome</code>" in wrong.text
    assert 'value="理由"' not in wrong.text and ">理由</textarea>" in wrong.text  # kept
    no_reason = await client.post(
        f"/console/objections/{objection_id}/decide",
        data={"_csrf": csrf, "outcome": "upheld", "reason": ""},
    )
    assert no_reason.status_code == 422 and "<code>reason</code>" in no_reason.text
    assert 'id="outcome-upheld" name="outcome" value="upheld" required checked' in no_reason.text
    assert (await _product(client, market, product_id))["state"] == "listed"
    api = await client.get(
        f"/v1/listing-objections/{objection_id}", headers=bearer(market["alice"])
    )
    assert api.json()["state"] == "registered" and api.json()["suspended_listing"] is False


async def test_market_tokens_cannot_reach_the_pages(client, market):
    product_id = await list_product(client, market)
    objection = await _object(client, product_id, market["other"])
    for token in (market["seller"], market["other"]):
        signed = await sign_in(client, token)
        assert signed.status_code == 403
        for path in ("/console/objections/", f"/console/objections/{objection['id']}"):
            page = await client.get(path, headers=bearer(token), follow_redirects=False)
            assert page.status_code == 303 and "/console/sign-in" in page.headers["location"]
        posted = await client.post(
            f"/console/objections/{objection['id']}/suspend",
            data={"reason": "x"},
            headers=bearer(token),
            follow_redirects=False,
        )
        assert posted.status_code == 303
    assert (await _product(client, market, product_id))["state"] == "listed"
