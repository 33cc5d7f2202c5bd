"""The staff console over HTTP (no browser): sign-in and its refusals, CSRF, the session's end,
the security headers, and the queue and case pages against real review cases."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

from litestar.routes import HTTPRoute

from exchange.console.web import CONTENT_SECURITY_POLICY, SESSION_COOKIE
from tests.kit.api import bearer
from tests.kit.console import csrf_of, hidden_fields, sign_in
from tests.kit.documents import metadata
from tests.kit.market import submit


async def test_a_reviewer_signs_in_and_gets_a_strict_session_cookie(client, market):
    response = await sign_in(client, market["alice"], "/console/reviews")
    assert response.status_code == 303
    assert response.headers["location"] == "/console/reviews"
    cookie = response.headers["set-cookie"].lower()
    assert f"{SESSION_COOKIE}=" in cookie
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
    page = await client.get("/console/reviews")
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["cache-control"] == "no-store"
    assert "审核队列" in page.text  # Chinese by default


async def test_without_a_session_every_page_goes_to_sign_in(client):
    page = await client.get("/console/reviews", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"].startswith("/console/sign-in?next=%2Fconsole%2Freviews")


async def test_every_console_page_needs_a_session(client, market):
    """Every console route but sign-in, the language switch and the static files sends a caller
    without a session (a bearer token does not count) to sign in, and does nothing."""
    walked = 0
    seen: set[str] = set()
    for route in client.app.routes:
        if not isinstance(route, HTTPRoute) or not route.path.startswith("/console"):
            continue
        for handler in route.route_handlers:
            if route.path.startswith("/console/static") or handler.opt.get("console_open"):
                continue
            path = re.sub(r"\{\w+:uuid\}", str(uuid.uuid4()), route.path)
            path = re.sub(r"\{\w+:str\}", "XX", path)
            for method in handler.http_methods - {"OPTIONS", "HEAD"}:
                answer = await client.request(
                    method, path, headers=bearer(market["alice"]), follow_redirects=False
                )
                assert answer.status_code == 303, (method, path, answer.status_code)
                assert answer.headers["location"].startswith("/console/sign-in"), path
                walked += 1
                seen.add(route.path)
    assert walked >= 6
    assert {"/console/objections", "/console/objections/{objection_id:uuid}/decide"} <= seen


async def test_a_sellers_token_cannot_sign_in(client, market):
    response = await sign_in(client, market["seller"])
    assert response.status_code == 403
    assert "reviewer or admin" in response.text
    assert SESSION_COOKIE not in response.headers.get("set-cookie", "")


async def test_an_unknown_token_and_a_forged_sign_in_form_are_refused(client, market):
    assert (await sign_in(client, "dxt_" + "0" * 32 + "_nope")).status_code == 401
    forged = await client.post(
        "/console/sign-in",
        data={"_sign_in": "guess", "next": "/console/", "token": market["alice"]},
        follow_redirects=False,
    )
    assert forged.status_code == 403
    assert "sign-in form expired" in forged.text


async def test_sign_in_never_redirects_off_the_console(client, market):
    response = await sign_in(client, market["alice"], "https://evil.example/x")
    assert response.headers["location"] == "/console/"
    response = await sign_in(client, market["alice"], "//evil.example/console/")
    assert response.headers["location"] == "/console/"


async def test_a_form_without_its_csrf_token_is_refused(client, market):
    product = await submit(client, market["seller"], metadata())
    case_id = product["review"]["case_id"]
    await sign_in(client, market["alice"])
    refused = await client.post(f"/console/reviews/{case_id}/claim", data={})
    assert refused.status_code == 403
    assert "CSRF" in refused.text
    wrong = await client.post(f"/console/reviews/{case_id}/claim", data={"_csrf": "0" * 64})
    assert wrong.status_code == 403
    case = (await client.get(f"/v1/reviews/{case_id}", headers=bearer(market["alice"]))).json()
    assert case["claimed_by"] is None  # nothing happened
    csrf = await csrf_of(client, f"/console/reviews/{case_id}")
    done = await client.post(
        f"/console/reviews/{case_id}/claim", data={"_csrf": csrf}, follow_redirects=False
    )
    assert done.status_code == 303
    case = (await client.get(f"/v1/reviews/{case_id}", headers=bearer(market["alice"]))).json()
    assert case["claimed_by"] is not None


async def test_an_idle_session_ends_and_returns_to_sign_in(client, market, clock, settings):
    await sign_in(client, market["alice"])
    assert (await client.get("/console/")).status_code == 200
    clock.advance(timedelta(minutes=settings.console_idle_minutes + 1))
    page = await client.get("/console/", follow_redirects=False)
    assert page.status_code == 303
    assert "why=expired" in page.headers["location"]
    # Signing in again works, and the old session stays ended.
    await sign_in(client, market["alice"])
    assert (await client.get("/console/")).status_code == 200


async def test_revoking_the_token_ends_the_session_at_once(client, market, admin_token):
    await sign_in(client, market["alice"])
    assert (await client.get("/console/")).status_code == 200
    me = (await client.get("/v1/me", headers=bearer(market["alice"]))).json()
    revoked = await client.post(f"/v1/tokens/{me['token_id']}/revoke", headers=bearer(admin_token))
    assert revoked.status_code == 200, revoked.text
    page = await client.get("/console/", follow_redirects=False)
    assert page.status_code == 303 and "/console/sign-in" in page.headers["location"]


async def test_sign_out_ends_the_session(client, market):
    await sign_in(client, market["alice"])
    csrf = await csrf_of(client)
    out = await client.post("/console/sign-out", data={"_csrf": csrf}, follow_redirects=False)
    assert out.status_code == 303
    client.cookies.clear()
    assert (await client.get("/console/", follow_redirects=False)).status_code == 303


async def test_the_language_switch_shows_english(client, market):
    await sign_in(client, market["alice"])
    switched = await client.get(
        "/console/language", params={"to": "en", "next": "/console/reviews"}, follow_redirects=False
    )
    assert switched.headers["location"] == "/console/reviews"
    page = await client.get("/console/reviews")
    assert "Review queue" in page.text and "审核队列" not in page.text


async def test_four_eyes_in_the_console_lists_the_product(client, market, admin_token):
    product = await submit(
        client,
        market["seller"],
        metadata(classification__data_level="important", classification__general_grade=None),
    )
    case_id = product["review"]["case_id"]
    evidence = {"evidence.CAU-04.reference": "doc://legal/assessment.pdf"}

    async def approve_as(reviewer: str) -> str:
        client.cookies.clear()
        await sign_in(client, market[reviewer])
        page = await client.get(f"/console/reviews/{case_id}")
        claim = await client.post(
            f"/console/reviews/{case_id}/claim", data=hidden_fields(page.text)
        )
        assert claim.status_code == 200, claim.text
        decided = await client.post(
            f"/console/reviews/{case_id}/decide",
            data={**hidden_fields(claim.text), "verdict": "approve", "reason": "ok", **evidence},
        )
        assert decided.status_code == 200, decided.text
        return str(decided.text)

    first = await approve_as("alice")
    assert 'data-approvals="1" data-needed="2"' in first
    assert "1 / 2" in first
    second = await approve_as("bob")
    assert 'data-approvals="2"' in second
    listed = (
        await client.get(f"/v1/products/{product['id']}", headers=bearer(market["seller"]))
    ).json()
    assert listed["state"] == "listed"
    # The audit trail holds the console's actions under the reviewers' own tokens.
    audit = (
        await client.get("/v1/audit", params={"subject_id": case_id}, headers=bearer(admin_token))
    ).json()["items"]
    assert sorted(e["action"] for e in audit).count("review.decided") == 2


async def test_the_navigation_offers_the_audit_trail_to_admins_only(client, market, admin_token):
    await sign_in(client, market["alice"])
    assert 'href="/console/audit"' not in (await client.get("/console/")).text
    client.cookies.clear()
    await sign_in(client, admin_token)
    assert 'href="/console/audit"' in (await client.get("/console/")).text


async def test_signed_in_pages_carry_the_servers_own_time(client, market):
    """`Server-Timing: app;dur=<ms>` (what `dataex bench console` reports beside its client's
    time) on a signed-in staff member's pages, error pages included; never before sign-in."""
    sign_in_page = await client.get("/console/sign-in")
    assert "server-timing" not in sign_in_page.headers
    assert "server-timing" not in (await sign_in(client, market["alice"])).headers
    for path, status in (("/console/reviews/", 200), (f"/console/reviews/{uuid.uuid4()}", 404)):
        page = await client.get(path)
        assert page.status_code == status, page.text
        name, _, duration = page.headers["server-timing"].partition(";dur=")
        assert name == "app" and float(duration) > 0
    assert "server-timing" not in (await client.get("/console/static/console.css")).headers


async def test_the_queue_offers_a_next_page_only_when_there_is_one(client, market):
    for index in range(50):
        await submit(client, market["seller"], metadata(name_zh=f"产品 {index}"))
    await sign_in(client, market["alice"])
    first = await client.get("/console/reviews/")
    assert first.text.count('<tr id="case-') == 50
    assert 'rel="next"' not in first.text
    await submit(client, market["seller"], metadata(name_zh="第五十一个"))
    first = await client.get("/console/reviews/")
    assert 'rel="next"' in first.text
    href = first.text.split('rel="next"')[0].rpartition('href="')[2].split('"')[0]
    second = await client.get(href.replace("&amp;", "&"))
    assert second.text.count('<tr id="case-') == 1
