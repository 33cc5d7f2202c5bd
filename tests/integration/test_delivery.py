"""Grants follow trades and listings; delivery tokens and their refusals; exact quotas."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import msgspec
import pytest

from exchange.delivery import quota, tokens
from exchange.delivery.quota import LeaseBook
from exchange.delivery.usage import UsageNotRecorded, UsageRecord, UsageRecorder
from exchange.platform.metering import Dimension
from exchange.platform.signing import KeyRing, jwks, load_master_key
from tests.kit.api import bearer, issue_token, make_uscc, register_org
from tests.kit.delivery import active_grant, deliver, executed, grant_service, reserved
from tests.kit.market import listed_product


async def _product(client, trade) -> dict[str, Any]:
    return await listed_product(client, trade)


def _terms(trade, product, **kw):
    return executed(
        product_id=product["id"], product_code=product["product_code"],
        buyer_org=trade["buyer_org"], seller_org=trade["seller_org"], **kw,
    )  # fmt: skip


async def _state(pool, grant_id) -> tuple[str, list[str]]:
    row = await pool.fetchrow("SELECT state, suspended_by FROM grants WHERE id = $1", grant_id)
    return row["state"], list(row["suspended_by"])


async def _listing_events(pool, grants, after: int = 0) -> int:
    """Hand the listing room's outbox events (from position ``after``) to the delivery room."""
    rows = await pool.fetch(
        "SELECT subject, payload FROM outbox WHERE subject LIKE '%.listing.%'"
        " ORDER BY created_at, id OFFSET $1",
        after,
    )
    for row in rows:
        event = msgspec.json.decode(bytes(row["payload"]))
        await deliver(pool, grants, row["subject"], event["type"], event["data"])
    return after + len(rows)


async def test_grants_follow_the_trade_and_the_listing(client, trade, pool, clock, settings):
    product = await _product(client, trade)
    grants = grant_service(pool, clock, settings)
    data = _terms(trade, product, modes=("file", "api"))
    await deliver(pool, grants, "dx.trade.executed", "dx.trade.executed", data)
    await deliver(pool, grants, "dx.trade.executed", "dx.trade.executed", data)  # redelivered
    rows = await pool.fetch("SELECT id, mode, state FROM grants WHERE trade_id = $1 ORDER BY mode",
                            uuid.UUID(data.trade_id))  # fmt: skip
    assert [(r["mode"], r["state"]) for r in rows] == [("api", "pending"), ("file", "pending")]
    api_grant = rows[0]["id"]
    await deliver(pool, grants, "dx.trade.reserved", "dx.trade.reserved", reserved(data))
    assert await _state(pool, api_grant) == ("active", [])

    seen = await _listing_events(pool, grants)  # the publication: nothing to lift
    path = f"/v1/products/{product['id']}"
    await client.post(
        f"{path}/suspend", json={"reason": "投诉核查"}, headers=bearer(trade["alice"])
    )
    seen = await _listing_events(pool, grants, seen)
    assert await _state(pool, api_grant) == ("suspended", ["listing"])
    # Staff suspend too: two causes; lifting the listing's leaves the staff's.
    admin = await grants.suspend(_actor(), api_grant, "核查")
    assert admin.suspended_by == ["exchange", "listing"]
    await client.post(f"{path}/reinstate", json={"reason": "核查完毕"},
                      headers=bearer(trade["alice"]))  # fmt: skip
    seen = await _listing_events(pool, grants, seen)
    assert await _state(pool, api_grant) == ("suspended", ["exchange"])
    assert (await grants.resume(_actor(), api_grant)).state == "active"
    await client.post(f"{path}/delist", json={"reason": "停止供应"},
                      headers=bearer(trade["seller"]))  # fmt: skip
    await _listing_events(pool, grants, seen)
    assert await _state(pool, api_grant) == ("revoked", [])

    events = await pool.fetch(
        "SELECT payload FROM outbox WHERE subject LIKE '%.grant.%' ORDER BY created_at, id"
    )
    api_events = [
        (e["type"], e["data"]["version"])
        for e in (msgspec.json.decode(bytes(r["payload"])) for r in events)
        if e["data"]["grant_id"] == str(api_grant)
    ]
    assert [t for t, _ in api_events] == [
        "dx.grant.activated", "dx.grant.suspended", "dx.grant.suspended",
        "dx.grant.changed", "dx.grant.resumed", "dx.grant.revoked",
    ]  # fmt: skip
    versions = [v for _, v in api_events]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)


def _actor():
    from exchange.platform.audit import Actor

    return Actor.cli("test")


async def test_news_that_comes_before_the_trade_is_kept_for_it(
    client, trade, pool, clock, settings
):
    product = await _product(client, trade)
    grants = grant_service(pool, clock, settings)
    data = _terms(trade, product)
    await deliver(pool, grants, "dx.trade.reserved", "dx.trade.reserved", reserved(data))
    await deliver(pool, grants, "dx.trade.executed", "dx.trade.executed", data)
    grant_id = uuid.uuid5(uuid.UUID(data.trade_id), "api")
    assert await _state(pool, grant_id) == ("active", [])
    voided = _terms(trade, product)
    await deliver(pool, grants, "dx.trade.voided", "dx.trade.voided",
                  reserved(voided) | {"state": "voided"})  # fmt: skip
    await deliver(pool, grants, "dx.trade.executed", "dx.trade.executed", voided)
    assert (await _state(pool, uuid.uuid5(uuid.UUID(voided.trade_id), "api")))[0] == "revoked"


async def test_grants_and_their_tokens_are_for_the_parties_only(
    client, trade, pool, clock, settings, admin_token
):
    product = await _product(client, trade)
    grants = grant_service(pool, clock, settings)
    grant_id = await active_grant(pool, grants, _terms(trade, product))
    other_org = await register_org(client, admin_token, make_uscc(4), ["buyer"])
    other = await issue_token(client, admin_token, other_org["id"], ["buyer"])
    path = f"/v1/grants/{grant_id}"
    assert (await client.get(path, headers=bearer(trade["buyer"]))).status_code == 200
    assert (await client.get(path, headers=bearer(trade["seller"]))).status_code == 200
    assert (await client.get(path, headers=bearer(trade["alice"]))).status_code == 200
    for method, suffix in (("GET", ""), ("GET", "/usage"), ("POST", "/tokens"),
                           ("POST", "/top-ups")):  # fmt: skip
        body = {"amount_fen": 1, "key": "k"} if suffix == "/top-ups" else None
        response = await client.request(method, path + suffix, json=body, headers=bearer(other))
        assert response.status_code == 404, (suffix, response.text)
    mine = (await client.get("/v1/grants", headers=bearer(trade["buyer"]))).json()["items"]
    assert [g["id"] for g in mine] == [str(grant_id)]
    assert (await client.get("/v1/grants", headers=bearer(other))).json()["items"] == []
    issued = await client.post(f"{path}/tokens", json={"ttl_seconds": 60},
                               headers=bearer(trade["buyer"]))  # fmt: skip
    assert issued.status_code == 201, issued.text
    body = issued.json()
    revoke = f"{path}/tokens/{body['jti']}/revoke"
    assert (await client.post(revoke, headers=bearer(other))).status_code == 404
    assert (await client.post(revoke, headers=bearer(trade["buyer"]))).status_code == 204
    upstream = f"/v1/products/{product['id']}/upstream"
    assert (
        await client.put(upstream, json={"base_url": "http://127.0.0.1:9"},
                         headers=bearer(trade["other"]))
    ).status_code == 404  # fmt: skip
    assert (
        await client.put(upstream, json={"base_url": "http://127.0.0.1:9"},
                         headers=bearer(trade["seller"]))
    ).status_code == 200  # fmt: skip


async def test_delivery_tokens_and_every_refusal(client, trade, pool, clock, settings):
    product = await _product(client, trade)
    grants = grant_service(pool, clock, settings)
    data = _terms(trade, product)
    await deliver(pool, grants, "dx.trade.executed", "dx.trade.executed", data)
    grant_id = uuid.uuid5(uuid.UUID(data.trade_id), "api")
    path = f"/v1/grants/{grant_id}/tokens"
    pending = await client.post(path, headers=bearer(trade["buyer"]))
    assert (pending.status_code, pending.json()["code"]) == (403, "grant_pending")
    await deliver(pool, grants, "dx.trade.reserved", "dx.trade.reserved", reserved(data))
    issued = (await client.post(path, headers=bearer(trade["buyer"]))).json()
    token = issued["token"]

    keys = await jwks(pool, "delivery")
    assert issued["kid"] in {k["kid"] for k in keys["keys"]}
    exchange_keys = await jwks(pool, "exchange")
    assert issued["kid"] not in {k["kid"] for k in exchange_keys["keys"]}
    published = (await client.get("/.well-known/jwks.json")).json()["keys"]
    assert {"kid": issued["kid"], "dataex_purpose": "delivery", "use": "sig"}.items() <= next(
        k for k in published if k["kid"] == issued["kid"]
    ).items()

    verifier = tokens.TokenVerifier(settings.exchange_code, keys)
    claims = verifier.verify(token, grant_id=str(grant_id), scope="api")
    assert claims.sub == trade["buyer_org"]["id"]
    assert claims.buyer_uscc == trade["buyer_org"]["uscc"]
    assert claims.exp - claims.iat == 900

    def refused(token_text, grant=str(grant_id), scope="api", now=None):
        try:
            verifier.verify(token_text, grant_id=grant, scope=scope, now=now)
        except tokens.TokenRefused as error:
            return error.code
        return None

    header, body, signature = token.split(".")
    flipped = signature[:-2] + ("AA" if signature[-2:] != "AA" else "BA")
    assert refused(f"{header}.{body}.{flipped}") == "token_invalid"
    assert refused(None) == "token_missing"
    assert refused(token, now=time.time() + 3600) == "token_expired"
    assert refused(token, grant=str(uuid.uuid4())) == "token_other_grant"
    assert refused(token, scope="file") == "token_wrong_scope"
    # Signed by the exchange's own (certificate) key: not a delivery key.
    ring = KeyRing(load_master_key(settings.state_dir))
    async with pool.acquire() as conn:
        exchange_key = await ring.current(conn, "exchange")
    forged, _ = tokens.issue(
        exchange_key, exchange_code=settings.exchange_code,
        buyer_org_id=uuid.UUID(trade["buyer_org"]["id"]), buyer_uscc=None, grant_id=grant_id,
        scope="api", now=time.time(),
    )  # fmt: skip
    assert refused(forged) == "token_wrong_key"
    # Revoked: the event carries the jti to every gateway.
    revoke = await client.post(f"{path}/{issued['jti']}/revoke", headers=bearer(trade["buyer"]))
    assert revoke.status_code == 204
    event = await pool.fetchrow(
        "SELECT payload FROM outbox WHERE subject LIKE '%.grant.changed' ORDER BY created_at DESC"
        " LIMIT 1"
    )
    verifier.revoked.add(msgspec.json.decode(bytes(event["payload"]))["data"]["revoked_jti"])
    assert refused(token) == "token_revoked"

    # Suspended and exhausted grants refuse new tokens with their own problem types.
    await grants.suspend(_actor(), grant_id, "核查")
    suspended = await client.post(path, headers=bearer(trade["buyer"]))
    assert (suspended.status_code, suspended.json()["code"]) == (403, "grant_suspended")
    await grants.resume(_actor(), grant_id)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("UPDATE grants SET state = 'exhausted' WHERE id = $1", grant_id)
    exhausted = await client.post(path, headers=bearer(trade["buyer"]))
    assert (exhausted.status_code, exhausted.json()["code"]) == (403, "quota_exhausted")


def _record(grant_id, taken, units) -> UsageRecord:
    from datetime import UTC, datetime

    return UsageRecord(
        id=uuid.uuid4(), grant_id=grant_id, served_at=datetime.now(UTC), units=units,
        leases=list(taken.values()), cost_millifen=0, detail={"test": True},
    )  # fmt: skip


async def test_a_quota_of_100_serves_exactly_100_across_two_processes(
    client, trade, pool, clock, settings
):
    product = await _product(client, trade)
    grants = grant_service(pool, clock, settings)
    grant_id = await active_grant(
        pool, grants, _terms(trade, product, dimensions=[Dimension("requests", quota=100)])
    )
    books = [LeaseBook(pool, holder=f"p{i}", on_exhausted=grants.exhausted) for i in range(2)]
    recorders = [UsageRecorder(pool), UsageRecorder(pool)]
    served: list[int] = []
    outcomes: dict[str, int] = {}

    async def client_task(n: int) -> None:
        book, recorder = books[n % 2], recorders[n % 2]
        while True:
            try:
                taken = await book.take(grant_id, {"requests": 1})
            except tokens.QuotaBusy:
                outcomes["busy"] = outcomes.get("busy", 0) + 1
                await asyncio.sleep(0.01)
                continue
            except tokens.QuotaExhausted:
                outcomes["exhausted"] = outcomes.get("exhausted", 0) + 1
                return
            try:
                await recorder.record(_record(grant_id, taken, {"requests": 1}))
                served.append(n)
            except UsageNotRecorded:
                pass
            finally:
                await book.done(grant_id, taken)
            await asyncio.sleep(0)
            if len(served) % 7 == 0:
                await book.return_idle(0.0)

    await asyncio.wait_for(asyncio.gather(*(client_task(n) for n in range(64))), 60)
    for book in books:
        await book.close()
    for recorder in recorders:
        await recorder.stop()
    assert len(served) == 100
    assert outcomes["exhausted"] == 64
    quota_row = await pool.fetchrow("SELECT * FROM grant_quotas WHERE grant_id = $1", grant_id)
    assert (quota_row["used_units"], quota_row["leased_units"]) == (100, 0)
    assert (
        await pool.fetchval("SELECT count(*) FROM usage_records WHERE grant_id = $1", grant_id)
        == 100
    )
    assert (await _state(pool, grant_id))[0] == "exhausted"
    with pytest.raises(tokens.QuotaExhausted):
        await LeaseBook(pool).take(grant_id, {"requests": 1})


async def test_a_dead_process_lease_comes_back_counted_from_its_records(
    client, trade, pool, clock, settings
):
    product = await _product(client, trade)
    grants = grant_service(pool, clock, settings)
    grant_id = await active_grant(
        pool, grants, _terms(trade, product, dimensions=[Dimension("requests", quota=1000)])
    )
    dead = LeaseBook(pool, holder="dead", ttl_seconds=1.0, use_margin_seconds=0.2)
    recorder = UsageRecorder(pool)
    for _ in range(5):
        taken = await dead.take(grant_id, {"requests": 1})
        await recorder.record(_record(grant_id, taken, {"requests": 1}))
    lease = await pool.fetchrow("SELECT * FROM quota_leases WHERE grant_id = $1", grant_id)
    assert lease["units"] > 5 and lease["closed_at"] is None
    # The process "dies": its lease is never returned. Until it expires the units stay out.
    quota_row = await pool.fetchrow("SELECT * FROM grant_quotas WHERE grant_id = $1", grant_id)
    assert quota_row["leased_units"] == lease["units"]
    await asyncio.sleep(1.2)
    # A record under the expired lease is refused: it cannot be served.
    with pytest.raises(UsageNotRecorded):
        await recorder.record(_record(grant_id, {"requests": lease["id"]}, {"requests": 1}))
    assert await quota.reap_expired(pool) == 1
    quota_row = await pool.fetchrow("SELECT * FROM grant_quotas WHERE grant_id = $1", grant_id)
    assert (quota_row["used_units"], quota_row["leased_units"]) == (5, 0)
    closed = await pool.fetchrow("SELECT used FROM quota_leases WHERE id = $1", lease["id"])
    assert closed["used"] == 5
    await recorder.stop()


async def _org_events(pool, grants) -> None:
    rows = await pool.fetch(
        "SELECT subject, payload FROM outbox WHERE subject LIKE '%.organisation.%'"
        " ORDER BY created_at, id"
    )
    for row in rows:
        event = msgspec.json.decode(bytes(row["payload"]))
        await deliver(pool, grants, row["subject"], event["type"], event["data"])


async def test_a_suspended_buyer_or_seller_suspends_its_grants(
    client, trade, pool, clock, settings, admin_token
):
    product = await _product(client, trade)
    grants = grant_service(pool, clock, settings)
    grant_id = await active_grant(pool, grants, _terms(trade, product))
    buyer_org = trade["buyer_org"]["id"]
    path = f"/v1/organisations/{buyer_org}"
    refused = await client.post(f"{path}/suspend", json={"reason": "x"},
                                headers=bearer(trade["alice"]))  # fmt: skip
    assert refused.status_code == 403  # a reviewer is not an admin
    done = await client.post(f"{path}/suspend", json={"reason": "监管要求"},
                             headers=bearer(admin_token))  # fmt: skip
    assert done.status_code == 200, done.text
    assert done.json()["suspended_reason"] == "监管要求"
    again = await client.post(f"{path}/suspend", json={"reason": "x"}, headers=bearer(admin_token))
    assert again.status_code == 409
    # The token check reads the organisation itself, before any event arrives.
    token = await client.post(f"/v1/grants/{grant_id}/tokens", headers=bearer(trade["buyer"]))
    assert (token.status_code, token.json()["code"]) == (403, "organisation_refused")
    await _org_events(pool, grants)
    assert await _state(pool, grant_id) == ("suspended", ["buyer"])
    assert (await client.post(f"{path}/reinstate", headers=bearer(admin_token))).status_code == 200
    await _org_events(pool, grants)
    assert await _state(pool, grant_id) == ("active", [])
    token = await client.post(f"/v1/grants/{grant_id}/tokens", headers=bearer(trade["buyer"]))
    assert token.status_code == 201, token.text


async def test_staff_work_grants_from_the_command_line(client, trade, pool, clock, settings):
    from tests.kit.processes import run_dataex, server_env

    product = await _product(client, trade)
    grants = grant_service(pool, clock, settings)
    grant_id = await active_grant(
        pool, grants, _terms(trade, product, dimensions=[Dimension("requests", quota=50)])
    )
    env = server_env(settings, settings.state_dir)
    listed = await asyncio.to_thread(run_dataex, "grants", "list", "--state", "active", env=env)
    assert listed.returncode == 0, listed.stderr
    assert str(grant_id) in listed.stdout and "requests: used 0 + leased 0 of 50" in listed.stdout
    done = await asyncio.to_thread(
        run_dataex, "grants", "suspend", str(grant_id), "--reason", "投诉核查", env=env
    )
    assert done.returncode == 0, done.stderr
    assert await _state(pool, grant_id) == ("suspended", ["exchange"])
    again = await asyncio.to_thread(run_dataex, "grants", "resume", str(grant_id), env=env)
    assert again.returncode == 0, again.stderr
    refused = await asyncio.to_thread(run_dataex, "grants", "resume", str(grant_id), env=env)
    assert refused.returncode == 1 and "conflict" in refused.stderr
    shown = await asyncio.to_thread(run_dataex, "grants", "show", str(grant_id), env=env)
    assert "usage: 0 records" in shown.stdout
    rows = await pool.fetch(
        "SELECT action FROM audit_log WHERE subject_id = $1 ORDER BY at", str(grant_id)
    )
    assert [r["action"] for r in rows] == ["grant.suspended", "grant.resumed"]
