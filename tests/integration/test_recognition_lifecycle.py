"""Two exchanges, a recognised product's life after the first listing: suspended and reinstated
at the origin, trust withdrawn and given back at the peer (issue 18).

- Reinstated on A, the product gets a fresh certificate: A serves it, A's feed carries it, and B
  accepts it when it is presented by hand, while the one issued before the suspension stays
  revoked.
- Trusted again by B, A's products come back only once B has read A's feed to its end, and only
  those A still lists: nothing is restored from B's stale record, so no order is accepted for a
  product A suspended meanwhile.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from exchange.recognition.verify import unverified_parts
from tests.kit.documents import metadata
from tests.kit.market import order_body
from tests.kit.recognition import (
    Exchange,
    credentialed_seller,
    list_on,
    ok,
    register,
    start_api,
    stop_api,
    token,
    trust,
    two_exchanges,
    until,
)


@pytest.fixture
async def exchanges(settings, servers, tmp_path):
    async with two_exchanges(settings, servers.admin_database_url, tmp_path) as pair:
        yield pair


async def origin_state_on(b: Exchange, code: str) -> str | None:
    seen = await b.http.get(f"/v1/recognitions/SHDX/{code}")
    return seen.json()["origin_state"] if seen.status_code == 200 else None


async def listed_on(b: Exchange) -> list[str]:
    """The product codes B's catalog shows as recognised from A."""
    page = (await b.http.get("/v1/products", params={"recognised_from": "SHDX"})).json()
    return sorted(item["product_code"] for item in page["items"])


async def order(b: Exchange, buyer: str, product_id: str) -> Any:
    return await b.http.post(
        "/v1/orders",
        json=order_body(product_id),
        headers={**b.headers(buyer), "Idempotency-Key": str(uuid.uuid4())},
    )


async def test_reinstated_at_the_origin_a_fresh_certificate_the_feed_carries_and_a_peer_accepts(
    exchanges,
):
    a, b = exchanges
    await trust(b, a)
    seller = await credentialed_seller(a, "91110000710925462X")
    product = await list_on(a, seller, metadata())
    code, product_id = product["product_code"], product["id"]
    before = await ok(await a.http.get(f"/v1/products/{product_id}/certificate"))

    async def origin_state_is(state: str) -> Any:
        async def check() -> bool:
            return await origin_state_on(b, code) == state

        return check

    await until(await origin_state_is("listed"))
    reviewer = a.headers(seller["reviewer"])
    await ok(
        await a.http.post(
            f"/v1/products/{product_id}/suspend", json={"reason": "来源争议"}, headers=reviewer
        )
    )
    await until(await origin_state_is("suspended"))
    await ok(
        await a.http.post(
            f"/v1/products/{product_id}/reinstate", json={"reason": "已核实"}, headers=reviewer
        )
    )
    await until(await origin_state_is("listed"))

    # The documented manual path: a caller on B presents the certificate A serves now.
    buyer_org = await register(b, "914403001922038216", ["buyer"], "深圳示例买方有限公司")
    caller = await token(b, buyer_org["id"], ["buyer"])
    after = await ok(await a.http.get(f"/v1/products/{product_id}/certificate"))

    async def present(certificate: str) -> Any:
        return await b.http.post(
            "/v1/recognitions",
            json={"certificate": certificate, "metadata": product["live"]["metadata"],
                  "credential": seller["credential"]["jws"]},
            headers=b.headers(caller),
        )  # fmt: skip

    presented = await present(after["jws"])
    assert presented.status_code == 201, presented.text
    assert presented.json()["origin_state"] == "listed"

    # It is a new certificate of the same revision, issued at the reinstatement ...
    assert after["jws"] != before["jws"]
    _, old_claims = unverified_parts(before["jws"])
    _, new_claims = unverified_parts(after["jws"])
    assert new_claims["jti"] != old_claims["jti"]
    assert new_claims["revision"] == old_claims["revision"] == product["live"]["number"]
    assert new_claims["iat"] >= old_claims["iat"]
    # ... the one A's feed carried with the reinstatement, and the one B lists the product with.
    feed = await ok(await a.http.get("/v1/recognition/feed"))
    _, page = unverified_parts(feed["jws"])
    assert [(i["event"], i.get("certificate")) for i in page["items"]] == [
        ("published", before["jws"]),
        ("suspended", None),
        ("published", after["jws"]),
    ]
    catalog = await ok(await b.http.get("/v1/products", params={"recognised_from": "SHDX"}))
    (item,) = catalog["items"]
    assert item["certificate"] == after["jws"]

    # The certificate issued before the suspension stays revoked.
    revoked = await present(before["jws"])
    assert revoked.status_code == 409, revoked.text
    assert revoked.json()["code"] == "recognition_certificate_revoked"

    # The seller, registered on B from its member credential, gets a token at B as the README
    # says: accepting the credential again names its organisation; B's admin issues the token.
    organisation = await ok(
        await b.http.post(
            "/v1/member-credentials/accept",
            json={"credential": seller["credential"]["jws"]},
            headers=b.headers(b.admin),
        ),
        201,
    )
    assert organisation["id"] == item["seller_org_id"]
    issued = await ok(
        await b.http.post(
            f"/v1/organisations/{organisation['id']}/tokens",
            json={"name": "seller at SZDX", "roles": ["seller"], "expires_in_days": 30},
            headers=b.headers(b.admin),
        ),
        201,
    )
    me = await ok(await b.http.get("/v1/me", headers=b.headers(issued["token"])))
    assert me["organisation"]["uscc"] == "91110000710925462X" and me["roles"] == ["seller"]


async def test_trusted_again_a_peer_shows_only_what_the_origin_still_lists_once_caught_up(
    exchanges,
):
    a, b = exchanges
    await trust(b, a)
    seller = await credentialed_seller(a, "9144030071526726XG")
    kept = await list_on(a, seller, metadata())
    dropped = await list_on(a, seller, metadata(name_zh="城市交通流量数据"))
    codes = sorted([kept["product_code"], dropped["product_code"]])

    async def both_listed_on_b() -> bool:
        return await listed_on(b) == codes

    await until(both_listed_on_b)
    on_b = {
        row["product_code"]: str(row["id"])
        for row in await b.pool.fetch("SELECT id, product_code FROM products")
    }
    buyer_org = await register(b, "91440300708461136T", ["buyer"], "深圳示例买方有限公司")
    buyer = await token(b, buyer_org["id"], ["buyer"])

    # B withdraws its trust in A; meanwhile A suspends one of the two products.
    await ok(await b.http.delete("/v1/peers/SHDX", headers=b.headers(b.admin)))
    assert await listed_on(b) == []
    await ok(
        await a.http.post(
            f"/v1/products/{dropped['id']}/suspend",
            json={"reason": "来源争议"},
            headers=a.headers(seller["reviewer"]),
        )
    )

    # B trusts A again while A's API is down: B cannot read what A did meanwhile, so it shows
    # nothing of A's and refuses orders for both, rather than restore its stale record.
    identity = (await ok(await a.http.get("/.well-known/dataex-exchange")))["jws"]
    keys = (await a.http.get("/.well-known/jwks.json")).json()
    stop_api(a)
    again = {"code": "SHDX", "base_url": a.url, "jwks": keys, "identity": identity}
    retrusted = await b.http.post("/v1/peers", json=again, headers=b.headers(b.admin))
    refused = await order(b, buyer, on_b[dropped["product_code"]])
    assert refused.status_code == 422, f"ordered in the window: {refused.text}"
    assert refused.json()["mismatches"][0]["term"] == "product"
    assert (await order(b, buyer, on_b[kept["product_code"]])).status_code == 422
    assert await listed_on(b) == []
    assert retrusted.status_code == 503, retrusted.text
    assert retrusted.json()["code"] == "recognition_feed_unavailable"
    (peer,) = await ok(await b.http.get("/v1/peers", headers=b.headers(b.admin)))
    assert peer["trusted"] is False and peer["last_error"]

    # A is back: trusted again, B reads A's feed to its end first; only what A lists returns.
    await start_api(a)
    peer = await ok(await b.http.post("/v1/peers", json=again, headers=b.headers(b.admin)), 201)
    assert peer["trusted"] is True and peer["last_error"] is None
    assert await listed_on(b) == [kept["product_code"]]
    state, suspended_by, reason = await b.pool.fetchrow(
        "SELECT state, suspended_by, suspended_reason FROM products WHERE product_code = $1",
        dropped["product_code"],
    )
    assert (state, suspended_by, reason) == ("suspended", "origin", "suspended by SHDX: 来源争议")
    assert await origin_state_on(b, dropped["product_code"]) == "suspended"
    assert (await order(b, buyer, on_b[dropped["product_code"]])).status_code == 422
    placed = await order(b, buyer, on_b[kept["product_code"]])
    assert placed.status_code == 201, placed.text
    restored = await b.pool.fetchval(
        "SELECT detail->'products_restored' FROM audit_log WHERE action = 'peer.trusted'"
        " ORDER BY id DESC LIMIT 1"
    )
    assert restored == 1
