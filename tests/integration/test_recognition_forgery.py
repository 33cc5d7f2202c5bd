"""Forgery and replay: each way a presented certificate can be wrong has its own problem type,
and every refusal is in the audit trail.

This exchange (DX) trusts a peer (SHDX) whose signing key the test holds, so the test can issue
genuine certificates and forge others. Feed pages are signed by the same key and handed to the
puller in place of an HTTP GET (the two-exchange test covers the HTTP side).
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import msgspec
import pytest
from litestar.testing import AsyncTestClient

from exchange import wiring
from exchange.app import create_app
from exchange.listings.lifecycle import product_code
from exchange.listings.schemas import ProductMetadata
from exchange.platform.audit import Actor
from exchange.platform.canonical import sha256_digest
from exchange.platform.signing import _kid
from exchange.recognition.schemas import (
    FeedItem,
)
from tests.kit.api import bearer, issue_token, make_uscc, register_org
from tests.kit.documents import metadata
from tests.kit.market import claim_and_decide, submit
from tests.kit.recognition import PEER, SELLER_USCC, Peer


def tamper(token: str, **changes: Any) -> str:
    """The same JWS with claims changed and the original signature kept."""
    header, payload, signature = token.split(".")
    claims = msgspec.json.decode(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims |= changes
    forged = base64.urlsafe_b64encode(msgspec.json.encode(claims)).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


@pytest.fixture
async def client(settings, clock):
    """This exchange's API without background pulling: these tests pull by hand."""
    app = create_app(replace(settings, peer_poll_ms=0), clock=clock)
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


@pytest.fixture
async def here(client, settings, clock, market, admin_token, pool):
    """This exchange, trusting SHDX."""
    peer = Peer(settings)
    trusted = await client.post(
        "/v1/peers",
        json={
            "code": PEER,
            "base_url": "http://127.0.0.1:9",
            "jwks": peer.jwks,
            "identity": peer.identity(),
        },
        headers=bearer(admin_token),
    )
    assert trusted.status_code == 201, trusted.text
    org = await register_org(client, admin_token, make_uscc(7), ["buyer"])
    caller = await issue_token(client, admin_token, org["id"], ["buyer"])
    return {"client": client, "peer": peer, "caller": caller, "clock": clock, "pool": pool,
           "settings": settings, "admin": admin_token}  # fmt: skip


async def present(here: dict[str, Any], certificate: str, document: dict[str, Any],
                  credential: str | None = None) -> Any:  # fmt: skip
    peer: Peer = here["peer"]
    return await here["client"].post(
        "/v1/recognitions",
        json={
            "certificate": certificate,
            "metadata": document,
            "credential": credential or peer.credential(here["clock"].now()),
        },
        headers=bearer(here["caller"]),
    )


async def test_a_genuine_certificate_is_recognised_once_however_often_presented(here):
    peer, now = here["peer"], here["clock"].now()
    document = metadata()
    certificate = peer.certificate(document, 1, now)
    first = await present(here, certificate, document)
    assert first.status_code == 201, first.text
    again = await present(here, certificate, document)
    assert again.status_code == 201
    assert again.json() == first.json()
    assert first.json()["outcome"] == "recognised" and first.json()["origin"] == PEER
    pool = here["pool"]
    assert (
        await pool.fetchval("SELECT count(*) FROM products WHERE recognised_from = $1", PEER) == 1
    )
    assert await pool.fetchval("SELECT count(*) FROM review_cases") == 0
    # Searchable with the catalog's recognised-from filter, certificate and all.
    page = (await here["client"].get("/v1/products", params={"recognised_from": PEER})).json()
    assert [i["certificate"] for i in page["items"]] == [certificate]


def _other_key_certificate(peer: Peer, document: dict[str, Any], now: datetime) -> str:
    return peer.certificate(document, 1, now, key=Peer.new_key())


def _tampered_certificate(peer: Peer, document: dict[str, Any], now: datetime) -> str:
    return tamper(
        peer.certificate(document, 1, now), seller={"name": "冒名公司", "uscc": SELLER_USCC}
    )


def _untrusted_issuer(peer: Peer, document: dict[str, Any], now: datetime) -> str:
    return tamper(peer.certificate(document, 1, now), iss="XXDX")


FORGERIES = [
    ("signed_by_an_unknown_key", _other_key_certificate, "recognition_unknown_key", 422),
    ("a_tampered_claim", _tampered_certificate, "recognition_bad_signature", 422),
    ("an_untrusted_issuer", _untrusted_issuer, "recognition_untrusted_issuer", 422),
]


@pytest.mark.parametrize(
    ("case", "forge", "code", "status"), FORGERIES, ids=[f[0] for f in FORGERIES]
)
async def test_a_forged_certificate_is_refused_with_its_own_problem_and_audited(
    here, case, forge, code, status
):
    document = metadata()
    response = await present(here, forge(here["peer"], document, here["clock"].now()), document)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["type"] == f"urn:dataex:problem:{code}"
    await _audited(here, code)
    assert await here["pool"].fetchval("SELECT count(*) FROM products") == 0


async def _audited(here: dict[str, Any], code: str) -> None:
    rows = await here["pool"].fetch(
        "SELECT action, detail FROM audit_log WHERE subject_type = 'recognition' ORDER BY id"
    )
    assert [r["detail"]["code"] for r in rows if r["action"].endswith("_refused")][-1] == code


async def test_metadata_that_does_not_match_the_digest_is_refused(here):
    document = metadata()
    certificate = here["peer"].certificate(document, 1, here["clock"].now())
    altered = metadata(plans=[document["plans"][0] | {"price_fen": 1}])
    response = await present(here, certificate, altered)
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "recognition_digest_mismatch"
    assert problem["certified"] == sha256_digest(msgspec.convert(document, ProductMetadata))
    await _audited(here, "recognition_digest_mismatch")


async def test_an_expired_certificate_is_refused(here):
    document = metadata()
    certificate = here["peer"].certificate(document, 1, here["clock"].now() - timedelta(days=366))
    response = await present(here, certificate, document)
    assert response.status_code == 422
    assert response.json()["code"] == "recognition_certificate_expired"
    await _audited(here, "recognition_certificate_expired")


async def test_a_forged_member_credential_is_refused(here):
    peer, now = here["peer"], here["clock"].now()
    document = metadata()
    forged = peer.credential(now, key=Peer.new_key())
    response = await present(here, peer.certificate(document, 1, now), document, forged)
    assert response.status_code == 422
    assert response.json()["code"] == "recognition_unknown_key"


async def test_an_older_revision_after_a_newer_one_is_a_replay(here):
    peer, now = here["peer"], here["clock"].now()
    first, second = metadata(), metadata(summary="新版说明:补充了 2025 年数据。")
    old = peer.certificate(first, 1, now)
    here["clock"].advance(timedelta(minutes=5))
    new = peer.certificate(second, 2, here["clock"].now())
    assert (await present(here, old, first)).status_code == 201
    assert (await present(here, new, second)).status_code == 201
    replayed = await present(here, old, first)
    assert replayed.status_code == 409
    assert replayed.json()["code"] == "recognition_revision_replayed"
    assert replayed.json()["recognised_revision"] == 2
    await _audited(here, "recognition_revision_replayed")
    live = await here["pool"].fetchval(
        "SELECT live_revision FROM products WHERE recognised_from = $1", PEER
    )
    assert live == 2


async def test_a_certificate_revoked_at_the_origin_is_refused_and_the_feed_applies_once(here):
    peer: Peer = here["peer"]
    clock = here["clock"]
    document = metadata()
    certificate = peer.certificate(document, 1, clock.now())
    code = product_code(PEER, 2026, 1)
    credential = peer.credential(clock.now())
    digest = sha256_digest(msgspec.convert(document, ProductMetadata))
    clock.advance(timedelta(minutes=1))
    peer.items = [
        FeedItem(seq=1, event="published", product_code=code, at=clock.now(), revision=1,
                 revision_digest=digest, certificate=certificate, metadata=document,
                 credential=credential),
        FeedItem(seq=2, event="delisted", product_code=code,
                 at=clock.now() + timedelta(seconds=1), revision=1, revision_digest=digest,
                 reason="卖方申请"),
    ]  # fmt: skip

    async def fetch(url: str) -> dict[str, str]:
        return peer.page(int(url.split("after=")[1].split("&", maxsplit=1)[0]))

    service = wiring.recognition(here["pool"], clock, here["settings"], None)  # type: ignore[arg-type]
    actor = Actor(label="system:peer-feed")
    assert await service.pull(PEER, fetch, actor) == 2
    assert await service.pull(PEER, fetch, actor) == 0  # the cursor moved: nothing twice
    state = await here["pool"].fetchval("SELECT state FROM products WHERE product_code = $1", code)
    assert state == "delisted"
    response = await present(here, certificate, document)
    assert response.status_code == 409
    assert response.json()["code"] == "recognition_certificate_revoked"
    await _audited(here, "recognition_certificate_revoked")
    seen = (await here["client"].get(f"/v1/recognitions/{PEER}/{code}")).json()
    assert seen["origin_state"] == "delisted" and seen["product_id"] is not None


async def test_a_reinstatement_certificate_of_the_suspensions_second_is_accepted_once_fed(here):
    """A certificate's ``iat`` is in whole seconds: one issued in the second of a suspension
    cannot be told from one the suspension revoked, until the feed brings it as the certificate
    of the reinstatement; from then on it is accepted by hand, the revoked one still refused."""
    peer: Peer = here["peer"]
    clock = here["clock"]
    document = metadata()
    code = product_code(PEER, 2026, 1)
    digest = sha256_digest(msgspec.convert(document, ProductMetadata))
    suspended_at = clock.now().replace(microsecond=500_000)
    before = peer.certificate(document, 1, suspended_at - timedelta(minutes=1))
    fresh = peer.certificate(document, 1, suspended_at + timedelta(milliseconds=300))
    peer.items = [
        FeedItem(seq=1, event="published", product_code=code,
                 at=suspended_at - timedelta(minutes=1), revision=1, revision_digest=digest,
                 certificate=before, metadata=document, credential=peer.credential(clock.now())),
        FeedItem(seq=2, event="suspended", product_code=code, at=suspended_at, reason="核查"),
    ]  # fmt: skip

    async def fetch(url: str) -> dict[str, str]:
        return peer.page(int(url.split("after=")[1].split("&", maxsplit=1)[0]))

    service = wiring.recognition(here["pool"], clock, here["settings"], None)  # type: ignore[arg-type]
    actor = Actor(label="system:peer-feed")
    assert await service.pull(PEER, fetch, actor) == 2
    early = await present(here, fresh, document)
    assert early.status_code == 409, early.text
    assert early.json()["code"] == "recognition_certificate_revoked"

    peer.items.append(
        FeedItem(seq=3, event="published", product_code=code,
                 at=suspended_at + timedelta(milliseconds=300), revision=1,
                 revision_digest=digest, certificate=fresh, metadata=document,
                 credential=peer.credential(clock.now()))
    )  # fmt: skip
    assert await service.pull(PEER, fetch, actor) == 1
    accepted = await present(here, fresh, document)
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["origin_state"] == "listed"
    revoked = await present(here, before, document)
    assert revoked.status_code == 409, revoked.text
    assert "present the one it issued since" in revoked.json()["detail"]


async def test_a_feed_page_not_signed_by_the_peer_is_refused_and_nothing_applies(here):
    peer, clock = here["peer"], here["clock"]
    impostor = Peer(here["settings"])

    async def fetch(url: str) -> dict[str, str]:
        return impostor.page(0)

    service = wiring.recognition(here["pool"], clock, here["settings"], None)  # type: ignore[arg-type]
    with pytest.raises(Exception, match="not among the keys pinned"):
        await service.pull(PEER, fetch, Actor(label="system:peer-feed"))
    peers = (await here["client"].get("/v1/peers", headers=bearer(here["admin"]))).json()
    assert peers[0]["cursor"] == 0 and "UnknownKey" in peers[0]["last_error"]
    assert peer.items == []


async def test_an_organisation_is_registered_from_a_credential_alone(here):
    peer, now = here["peer"], here["clock"].now()
    headers = bearer(here["admin"])
    client = here["client"]
    accepted = await client.post(
        "/v1/member-credentials/accept", json={"credential": peer.credential(now)}, headers=headers
    )
    assert accepted.status_code == 201, accepted.text
    org = accepted.json()
    assert org["uscc"] == SELLER_USCC and org["roles"] == ["seller"]
    kids = await here["pool"].fetch(
        "SELECT kid FROM org_keys WHERE org_id = $1", uuid.UUID(org["id"])
    )
    assert [k["kid"] for k in kids] == [_kid(peer.seller_key.public_key())]
    # A second credential for the same organisation adds nothing but the record of it.
    again = await client.post(
        "/v1/member-credentials/accept", json={"credential": peer.credential(now)}, headers=headers
    )
    assert again.json()["id"] == org["id"]
    forged = await client.post(
        "/v1/member-credentials/accept",
        json={"credential": peer.credential(now, key=Peer.new_key())},
        headers=headers,
    )
    assert forged.json()["code"] == "recognition_unknown_key"
    expired = await client.post(
        "/v1/member-credentials/accept",
        json={"credential": peer.credential(now - timedelta(days=400))},
        headers=headers,
    )
    assert expired.status_code == 422 and expired.json()["code"] == "credential_invalid"


async def test_a_recognised_product_is_revised_only_at_its_origin(here):
    peer, now = here["peer"], here["clock"].now()
    document = metadata()
    recognised = await present(here, peer.certificate(document, 1, now), document)
    assert recognised.status_code == 201
    org_id = await here["pool"].fetchval(
        "SELECT seller_org_id FROM products WHERE recognised_from = $1", PEER
    )
    seller = await issue_token(here["client"], here["admin"], str(org_id), ["seller"])
    response = await here["client"].post(
        f"/v1/products/{recognised.json()['product_id']}/revisions",
        json=metadata(summary="本地改动"),
        headers=bearer(seller),
    )
    assert response.status_code == 409
    assert "recognised from SHDX" in response.json()["detail"]


async def test_identity_and_feed_pages_verify_with_an_independent_jose_library(
    here, market, settings
):
    from joserfc import jws
    from joserfc.jwk import KeySet

    client = here["client"]
    identity = (await client.get("/.well-known/dataex-exchange")).json()
    assert identity["code"] == settings.exchange_code
    assert identity["feed_url"].endswith("/v1/recognition/feed")
    assert identity["policy_list_version"] == "2026.1"
    keys = KeySet.import_key_set(identity["jwks"])
    verified = jws.deserialize_compact(identity["jws"], keys, algorithms=["EdDSA"])
    assert msgspec.json.decode(verified.payload)["code"] == settings.exchange_code

    product = await submit(client, market["seller"], metadata())
    decided = await claim_and_decide(client, market["alice"], product["review"]["case_id"])
    assert decided.status_code == 200
    page = (await client.get("/v1/recognition/feed", params={"after": 0})).json()
    assert page["count"] == 1 and page["next_after"] == 1
    claims = msgspec.json.decode(
        jws.deserialize_compact(page["jws"], keys, algorithms=["EdDSA"]).payload
    )
    (item,) = claims["items"]
    assert item["event"] == "published" and item["seq"] == 1
    assert item["revision_digest"] == sha256_digest(
        msgspec.convert(item["metadata"], ProductMetadata)
    )
    empty = (await client.get("/v1/recognition/feed", params={"after": 1})).json()
    assert empty["count"] == 0 and empty["next_after"] == 1
    # The cursor is signed into the page as RFC 8785 JSON: beyond 2^53 - 1 it is refused, not
    # a 500 (schemathesis found one).
    beyond = await client.get("/v1/recognition/feed", params={"after": 2**53})
    assert beyond.status_code == 400, beyond.text
    last = await client.get("/v1/recognition/feed", params={"after": 2**53 - 1})
    assert last.status_code == 200 and last.json()["count"] == 0


async def test_cautious_hits_the_origin_cleared_do_not_hold_orders_here(here):
    from tests.kit.documents import DEIDENTIFIED_PI
    from tests.kit.market import order_body

    peer, now, client = here["peer"], here["clock"].now(), here["client"]
    document = metadata(classification__personal_info=DEIDENTIFIED_PI)
    recognised = await present(here, peer.certificate(document, 1, now), document)
    assert recognised.status_code == 201, recognised.text
    assert await here["pool"].fetchval("SELECT cleared FROM recognitions") == ["CAU-02"]
    order = await client.post(
        "/v1/orders",
        json=order_body(recognised.json()["product_id"]),
        headers={**bearer(here["caller"]), "Idempotency-Key": str(uuid.uuid4())},
    )
    assert order.status_code == 201, order.text
    assert order.json()["state"] == "awaiting_signatures"
    assert await here["pool"].fetchval("SELECT count(*) FROM review_cases") == 0


async def test_without_a_credential_the_seller_must_already_be_registered_from_one(here):
    peer, now, client = here["peer"], here["clock"].now(), here["client"]
    document = metadata()
    certificate = peer.certificate(document, 1, now)
    body = {"certificate": certificate, "metadata": document}
    refused = await client.post("/v1/recognitions", json=body, headers=bearer(here["caller"]))
    assert refused.status_code == 422
    assert refused.json()["code"] == "credential_invalid"
    assert SELLER_USCC in refused.json()["detail"]
    await _audited(here, "credential_invalid")
    accepted = await client.post(
        "/v1/member-credentials/accept",
        json={"credential": peer.credential(now)},
        headers=bearer(here["admin"]),
    )
    assert accepted.status_code == 201
    recognised = await client.post("/v1/recognitions", json=body, headers=bearer(here["caller"]))
    assert recognised.status_code == 201, recognised.text
    seller = await here["pool"].fetchval(
        "SELECT seller_org_id FROM products WHERE id = $1",
        uuid.UUID(recognised.json()["product_id"]),
    )
    assert str(seller) == accepted.json()["id"]


async def test_a_local_suspension_outlasts_news_from_the_origin(here, market):
    peer, clock, client = here["peer"], here["clock"], here["client"]
    first, second = metadata(), metadata(summary="新版说明:补充了 2025 年数据。")
    recognised = await present(here, peer.certificate(first, 1, clock.now()), first)
    product_id = recognised.json()["product_id"]
    suspended = await client.post(
        f"/v1/products/{product_id}/suspend",
        json={"reason": "本所核查中"},
        headers=bearer(market["alice"]),
    )
    assert suspended.status_code == 200, suspended.text
    clock.advance(timedelta(minutes=1))
    newer = await present(here, peer.certificate(second, 2, clock.now()), second)
    assert newer.status_code == 201, newer.text
    row = await here["pool"].fetchrow(
        "SELECT state, suspended_reason, live_revision FROM products WHERE id = $1",
        uuid.UUID(product_id),
    )
    assert (row["state"], row["suspended_reason"], row["live_revision"]) == (
        "suspended",
        "本所核查中",
        2,
    )
