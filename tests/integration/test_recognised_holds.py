"""A recognised product's suspensions by cause: the listing room's entry points for recognition,
through the product's transition table, with the catalog row kept in step by the hook."""

from __future__ import annotations

import uuid

import msgspec

from exchange import wiring
from exchange.listings.schemas import ProductMetadata
from exchange.platform.signing import KeyRing, load_master_key
from tests.kit.api import bearer
from tests.kit.documents import metadata

ORIGIN = "SZDX"


async def _state(pool, product_id):
    row = await pool.fetchrow(
        "SELECT p.state, p.suspended_by, p.suspended_reason, p.live_revision,"
        " c.product_id IS NOT NULL AS in_catalog FROM products p"
        " LEFT JOIN catalog_entries c ON c.product_id = p.id WHERE p.id = $1",
        product_id,
    )
    return dict(row)


async def test_a_staff_suspension_outlasts_the_origins_news_and_the_others_do_not(
    client, market, pool, clock, settings
):
    listings = wiring.listings(pool, clock, settings, KeyRing(load_master_key(settings.state_dir)))
    document = msgspec.convert(metadata(), ProductMetadata)
    seller = uuid.UUID(market["seller_org"]["id"])
    product_id = None

    async def recognise(revision: int) -> uuid.UUID:
        async with pool.acquire() as conn, conn.transaction():
            return await listings.recognise(
                conn, product_id=product_id, seller_id=seller, code=f"{ORIGIN}-2026-000042",
                origin=ORIGIN, revision=revision, metadata=document,
                digest=f"sha256:{revision:064x}", certificate="origin.certificate.jws",
                at=clock.now(),
            )  # fmt: skip

    async def origin(action: str, reason: str) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await listings.hold_recognised(conn, product_id, action, reason, clock.now())  # type: ignore[arg-type]

    product_id = await recognise(1)
    assert await _state(pool, product_id) == {
        "state": "listed", "suspended_by": None, "suspended_reason": None, "live_revision": 1,
        "in_catalog": True,
    }  # fmt: skip

    # Staff here suspend it; the origin's suspension and a newer revision leave that alone.
    staff = bearer(market["alice"])
    response = await client.post(
        f"/v1/products/{product_id}/suspend", json={"reason": "投诉核查中"}, headers=staff
    )
    assert response.status_code == 200, response.text
    assert response.json()["suspended_by"] == "exchange"
    await origin("origin_suspend", f"suspended by {ORIGIN}")
    await recognise(2)
    assert await _state(pool, product_id) == {
        "state": "suspended", "suspended_by": "exchange", "suspended_reason": "投诉核查中",
        "live_revision": 2, "in_catalog": False,
    }  # fmt: skip

    # Reinstated here, then suspended by the origin: its next revision lists it again.
    response = await client.post(
        f"/v1/products/{product_id}/reinstate", json={"reason": "核查完毕"}, headers=staff
    )
    assert response.status_code == 200, response.text
    await origin("origin_suspend", f"suspended by {ORIGIN}: 卖方申请")
    assert (await _state(pool, product_id))["suspended_by"] == "origin"
    await recognise(3)
    assert await _state(pool, product_id) == {
        "state": "listed", "suspended_by": None, "suspended_reason": None, "live_revision": 3,
        "in_catalog": True,
    }  # fmt: skip

    # Trust withdrawn hides it; trust given back lists it again, if the origin still does.
    async with pool.acquire() as conn, conn.transaction():
        assert await listings.distrust_origin(conn, ORIGIN, "distrusted", clock.now()) == 1
    assert (await _state(pool, product_id))["suspended_by"] == "distrust"
    async with pool.acquire() as conn, conn.transaction():
        assert await listings.retrust_origin(conn, ORIGIN, [], clock.now()) == 0
        assert await listings.retrust_origin(conn, ORIGIN, [product_id], clock.now()) == 1
    assert (await _state(pool, product_id))["state"] == "listed"

    # Delisted by the origin is final here too: a later revision does not bring it back.
    await origin("origin_delist", f"delisted by {ORIGIN}")
    await recognise(4)
    await origin("origin_suspend", f"suspended by {ORIGIN}")
    assert await _state(pool, product_id) == {
        "state": "delisted", "suspended_by": None, "suspended_reason": None, "live_revision": 4,
        "in_catalog": False,
    }  # fmt: skip
