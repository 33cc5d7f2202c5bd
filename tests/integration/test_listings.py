"""Listings end to end over HTTP, on real PostgreSQL and NATS JetStream."""

from __future__ import annotations

import base64
import hashlib

import msgspec
import nats
import pytest
import rfc8785
from joserfc import jws
from joserfc.errors import BadSignatureError
from joserfc.jwk import KeySet

from exchange.listings.lifecycle import product_code_is_valid
from exchange.platform.clock import SystemClock
from exchange.platform.context import Platform
from exchange.platform.events import ListingEvent
from exchange.platform.outbox import relay_batch
from exchange.platform.signing import KeyRing, load_master_key
from tests.kit.api import bearer, make_uscc
from tests.kit.documents import DEIDENTIFIED_PI, metadata
from tests.kit.market import claim_and_decide, evidence_for, listed_product, submit


def claims_of(token):
    payload = token.split(".")[1]
    return msgspec.json.decode(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


async def test_deidentified_product_is_reviewed_listed_certified_and_announced(
    client, market, settings, pool
):
    product = await submit(
        client, market["seller"], metadata(classification__personal_info=DEIDENTIFIED_PI)
    )
    assert product["state"] == "in_review"
    assert product["review"]["hits"] == ["CAU-02"]

    queue = (await client.get("/v1/reviews", headers=bearer(market["alice"]))).json()["items"]
    (case,) = queue
    assert case["rules"] == ["CAU-02"] and case["approvals_needed"] == 1
    assert [e["code"] for e in case["hits"][0]["evidence_required"]] == [
        "reidentification_risk_assessment",
        "recipient_notice",
    ]

    decided = await claim_and_decide(
        client, market["alice"], case["id"], evidence=evidence_for("CAU-02")
    )
    assert decided.status_code == 200, decided.text
    assert decided.json()["state"] == "approved"

    listed = (
        await client.get(f"/v1/products/{product['id']}", headers=bearer(market["seller"]))
    ).json()
    assert listed["state"] == "listed"
    assert product_code_is_valid(listed["product_code"])
    assert listed["product_code"].startswith(f"{settings.exchange_code}-")
    assert listed["review"]["decisions"][0]["verdict"] == "approve"  # the seller sees the decision

    # The certificate verifies with an independent JOSE library and only the published JWKS.
    certificate = (await client.get(f"/v1/products/{product['id']}/certificate")).json()
    keys = KeySet.import_key_set((await client.get("/.well-known/jwks.json")).json())
    verified = jws.deserialize_compact(certificate["jws"], keys, algorithms=["EdDSA"])
    claims = msgspec.json.decode(verified.payload)
    assert claims["sub"] == listed["product_code"]
    assert claims["iss"] == settings.exchange_code
    assert claims["seller"]["uscc"] == make_uscc(1)
    digest = "sha256:" + hashlib.sha256(rfc8785.dumps(listed["live"]["metadata"])).hexdigest()
    assert claims["revision_digest"] == digest == listed["live"]["digest"]

    # The event was written with the state change and is relayed to JetStream.
    client_nats = await nats.connect(settings.nats_url)
    try:
        platform = Platform(
            settings=settings,
            clock=SystemClock(),
            pool=pool,
            nats=client_nats,
            keyring=KeyRing(load_master_key(settings.state_dir)),
        )
        assert await relay_batch(platform) == 1
        assert await relay_batch(platform) == 0  # marked published in the same transaction
        subject = settings.subject("listing", "published")
        sub = await client_nats.jetstream().pull_subscribe(subject, stream=settings.stream_name)
        (message,) = await sub.fetch(1, timeout=5)
        msgspec.json.decode(message.data, type=ListingEvent)  # matches the checked-in schema's type
        event = msgspec.json.decode(message.data)
        assert event["specversion"] == "1.0"
        assert event["type"] == "dx.listing.published"
        assert event["data"]["product_code"] == listed["product_code"]
        assert event["data"]["revision_digest"] == digest
        assert message.headers is not None
        assert message.headers["Nats-Msg-Id"] == event["id"]
    finally:
        await client_nats.close()


async def test_important_data_needs_two_different_reviewers(client, market):
    product = await submit(
        client,
        market["seller"],
        metadata(classification__data_level="important", classification__general_grade=None),
    )
    case_id = product["review"]["case_id"]
    first = await claim_and_decide(
        client, market["alice"], case_id, evidence=evidence_for("CAU-04")
    )
    assert first.status_code == 200
    assert first.json()["state"] == "open"  # one approval of two
    again = await claim_and_decide(
        client, market["alice"], case_id, evidence=evidence_for("CAU-04")
    )
    assert again.status_code == 409
    assert "already decided" in again.json()["detail"]
    second = await claim_and_decide(client, market["bob"], case_id, evidence=evidence_for("CAU-04"))
    assert second.json()["state"] == "approved"
    listed = (
        await client.get(f"/v1/products/{product['id']}", headers=bearer(market["seller"]))
    ).json()
    assert listed["state"] == "listed"


async def test_core_data_is_rejected_at_submission_and_never_queued(client, market):
    product = await submit(
        client,
        market["seller"],
        metadata(classification__data_level="core", classification__general_grade=None),
    )
    assert product["state"] == "rejected"
    assert [hit["rule"] for hit in product["policy"]["hits"]] == ["NEG-06"]
    assert product["review"] is None
    queue = (await client.get("/v1/reviews", headers=bearer(market["alice"]))).json()
    assert queue["items"] == []


async def test_an_incomplete_draft_saves_but_does_not_submit(client, market):
    created = await client.post(
        "/v1/products", json={"name_zh": "半成品"}, headers=bearer(market["seller"])
    )
    assert created.status_code == 201
    response = await client.post(
        f"/v1/products/{created.json()['id']}/submit", headers=bearer(market["seller"])
    )
    assert response.status_code == 422
    missing = {e["path"] for e in response.json()["errors"]}
    assert {
        "summary",
        "product_type",
        "sector",
        "manual",
        "contact",
        "source",
        "classification",
        "rights",
        "delivery",
        "plans",
    } == missing


async def test_an_approval_must_cite_evidence_for_every_cautious_hit(client, market):
    product = await submit(
        client,
        market["seller"],
        metadata(classification__personal_info=DEIDENTIFIED_PI, source__kind="purchased"),
    )
    assert product["review"]["hits"] == ["CAU-02", "CAU-07"]
    response = await claim_and_decide(
        client, market["alice"], product["review"]["case_id"], evidence=evidence_for("CAU-02")
    )
    assert response.status_code == 422
    assert "missing: CAU-07" in response.json()["detail"]


async def test_request_changes_returns_the_draft_to_the_seller_with_the_reason(client, market):
    product = await submit(client, market["seller"], metadata())
    response = await claim_and_decide(
        client,
        market["alice"],
        product["review"]["case_id"],
        verdict="request_changes",
        reason="样例数据过少",
    )
    assert response.json()["state"] == "changes_requested"
    seen = (
        await client.get(f"/v1/products/{product['id']}", headers=bearer(market["seller"]))
    ).json()
    assert seen["state"] == "changes_requested"
    assert seen["review"]["decisions"][0]["reason"] == "样例数据过少"
    edit = await client.patch(
        f"/v1/products/{product['id']}",
        json={"summary": "更新后的说明"},
        headers=bearer(market["seller"]),
    )
    assert edit.status_code == 200
    again = await client.post(
        f"/v1/products/{product['id']}/submit", headers=bearer(market["seller"])
    )
    assert again.json()["state"] == "in_review"


async def test_material_change_waits_for_review_while_the_listed_revision_stays_live(
    client, market
):
    listed = await listed_product(client, market)
    changed = metadata(classification__personal_info=DEIDENTIFIED_PI)
    response = await client.post(
        f"/v1/products/{listed['id']}/revisions", json=changed, headers=bearer(market["seller"])
    )
    assert response.status_code == 200, response.text
    product = response.json()
    assert product["state"] == "listed"
    assert product["live"]["number"] == 1 and product["pending"]["number"] == 2
    assert product["review"]["hits"] == ["CAU-02"] and product["review"]["state"] == "open"
    decided = await claim_and_decide(
        client, market["alice"], product["review"]["case_id"], evidence=evidence_for("CAU-02")
    )
    assert decided.status_code == 200
    after = (
        await client.get(f"/v1/products/{listed['id']}", headers=bearer(market["seller"]))
    ).json()
    assert after["live"]["number"] == 2 and after["pending"] is None
    assert after["product_code"] == listed["product_code"]


async def test_cosmetic_change_goes_live_at_once_without_a_case(client, market, pool):
    listed = await listed_product(client, market)
    cases_before = await pool.fetchval("SELECT count(*) FROM review_cases")
    response = await client.post(
        f"/v1/products/{listed['id']}/revisions",
        json=metadata(summary="新的简介", tags=["气象", "天气"]),
        headers=bearer(market["seller"]),
    )
    assert response.status_code == 200, response.text
    product = response.json()
    assert product["live"]["number"] == 2 and product["live"]["change"] == "cosmetic"
    assert product["pending"] is None
    assert await pool.fetchval("SELECT count(*) FROM review_cases") == cases_before
    certificate = (await client.get(f"/v1/products/{listed['id']}/certificate")).json()
    assert certificate["revision"] == 2


async def test_illegal_transitions_are_409_naming_state_and_allowed_actions(client, market):
    listed = await listed_product(client, market)
    response = await client.post(
        f"/v1/products/{listed['id']}/submit", headers=bearer(market["seller"])
    )
    assert response.status_code == 409
    body = response.json()
    assert body["state"] == "listed"
    assert body["allowed_actions"] == ["delist", "revise", "suspend"]
    edit = await client.patch(
        f"/v1/products/{listed['id']}", json={"summary": "x"}, headers=bearer(market["seller"])
    )
    assert edit.status_code == 409


async def test_suspend_reinstate_delist(client, market, pool):
    listed = await listed_product(client, market)
    path = f"/v1/products/{listed['id']}"
    suspended = await client.post(
        f"{path}/suspend", json={"reason": "投诉核查"}, headers=bearer(market["alice"])
    )
    assert suspended.json()["state"] == "suspended"
    assert suspended.json()["suspended_reason"] == "投诉核查"
    assert (await client.get(f"{path}/certificate")).status_code == 404
    # The seller cannot reinstate itself.
    assert (
        await client.post(
            f"{path}/reinstate", json={"reason": "x"}, headers=bearer(market["seller"])
        )
    ).status_code == 403
    back = await client.post(
        f"{path}/reinstate", json={"reason": "核查完毕"}, headers=bearer(market["alice"])
    )
    assert back.json()["state"] == "listed"
    gone = await client.post(
        f"{path}/delist", json={"reason": "停止供应"}, headers=bearer(market["seller"])
    )
    assert gone.json()["state"] == "delisted"
    events = await pool.fetch("SELECT subject FROM outbox ORDER BY created_at, id")
    kinds = [row["subject"].rsplit(".", 1)[1] for row in events]
    assert kinds == ["published", "suspended", "published", "delisted"]


async def test_sellers_see_only_their_own_products(client, market):
    mine = await client.post(
        "/v1/products", json={"name_zh": "我的"}, headers=bearer(market["seller"])
    )
    await client.post("/v1/products", json={"name_zh": "别人的"}, headers=bearer(market["other"]))
    page = (
        await client.get("/v1/products", params={"mine": "true"}, headers=bearer(market["seller"]))
    ).json()
    assert [p["id"] for p in page["items"]] == [mine.json()["id"]]
    assert (await client.get("/v1/products", params={"mine": "true"})).status_code == 401
    public = (await client.get("/v1/products")).json()
    assert public["items"] == []  # drafts are never public
    other_case = await client.get("/v1/reviews", headers=bearer(market["seller"]))
    assert other_case.status_code == 403


async def test_certificates_signed_before_a_key_rotation_still_verify(
    client, market, settings, pool
):
    first = await listed_product(client, market)
    old = (await client.get(f"/v1/products/{first['id']}/certificate")).json()
    ring = KeyRing(load_master_key(settings.state_dir))
    async with pool.acquire() as conn:
        new_kid = await ring.rotate(conn, SystemClock().now())
    second = await listed_product(client, market)
    new = (await client.get(f"/v1/products/{second['id']}/certificate")).json()
    assert new["kid"] == new_kid != old["kid"]
    keys = KeySet.import_key_set((await client.get("/.well-known/jwks.json")).json())
    for certificate in (old, new):
        jws.deserialize_compact(certificate["jws"], keys, algorithms=["EdDSA"])


async def test_a_tampered_certificate_does_not_verify(client, market):
    listed = await listed_product(client, market)
    certificate = (await client.get(f"/v1/products/{listed['id']}/certificate")).json()
    header, payload, signature = certificate["jws"].split(".")
    claims = msgspec.json.decode(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["revision"] = 99
    forged = base64.urlsafe_b64encode(msgspec.json.encode(claims)).rstrip(b"=").decode()
    keys = KeySet.import_key_set((await client.get("/.well-known/jwks.json")).json())
    jws.deserialize_compact(certificate["jws"], keys, algorithms=["EdDSA"])  # the original verifies
    with pytest.raises(BadSignatureError):
        jws.deserialize_compact(f"{header}.{forged}.{signature}", keys, algorithms=["EdDSA"])


async def test_delisting_closes_a_change_still_under_review(client, market):
    listed = await listed_product(client, market)
    changed = metadata(classification__personal_info=DEIDENTIFIED_PI)
    pending = (
        await client.post(
            f"/v1/products/{listed['id']}/revisions", json=changed, headers=bearer(market["seller"])
        )
    ).json()
    case_id = pending["review"]["case_id"]
    gone = await client.post(
        f"/v1/products/{listed['id']}/delist",
        json={"reason": "停止"},
        headers=bearer(market["seller"]),
    )
    assert gone.json()["state"] == "delisted" and gone.json()["pending"] is None
    late = await claim_and_decide(client, market["alice"], case_id, evidence=evidence_for("CAU-02"))
    assert late.status_code == 409
