"""API tokens: shown once, stored as a hash, scoped, revocable, expiring."""

import hashlib
from datetime import timedelta

from tests.kit.api import bearer, issue_token, make_uscc, register_org


async def test_the_secret_is_shown_once_and_only_its_hash_is_stored(client, admin_token, pool):
    org = await register_org(client, admin_token, make_uscc(1))
    response = await client.post(
        f"/v1/organisations/{org['id']}/tokens",
        json={"name": "ci", "roles": ["seller"], "expires_in_days": 7},
        headers=bearer(admin_token),
    )
    assert response.status_code == 201
    issued = response.json()
    secret = issued["token"]
    token_id = issued["details"]["id"]
    listing = await client.get(f"/v1/organisations/{org['id']}/tokens", headers=bearer(admin_token))
    assert secret not in listing.text
    assert [t["id"] for t in listing.json()["items"]] == [token_id]
    assert "token" not in listing.json()["items"][0]
    row = await pool.fetchrow("SELECT * FROM api_tokens WHERE id = $1", issued["details"]["id"])
    assert bytes(row["token_hash"]) == hashlib.sha256(secret.encode()).digest()
    assert all(secret not in str(value) for value in dict(row).values())
    audit = await pool.fetch("SELECT detail::text AS d FROM audit_log")
    assert all(secret not in entry["d"] for entry in audit)


async def test_revocation_takes_effect_at_once_and_is_idempotent(client, admin_token, pool):
    org = await register_org(client, admin_token, make_uscc(2))
    token = await issue_token(client, admin_token, org["id"], ["buyer"])
    me = await client.get("/v1/me", headers=bearer(token))
    assert me.status_code == 200
    token_id = me.json()["token_id"]
    first = await client.post(f"/v1/tokens/{token_id}/revoke", headers=bearer(token))
    assert first.status_code == 200 and first.json()["status"] == "revoked"
    assert (await client.get("/v1/me", headers=bearer(token))).status_code == 401
    second = await client.post(f"/v1/tokens/{token_id}/revoke", headers=bearer(admin_token))
    assert second.status_code == 200
    assert second.json()["revoked_at"] == first.json()["revoked_at"]
    revocations = await pool.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'token.revoked' AND subject_id = $1",
        token_id,
    )
    assert revocations == 1


async def test_tokens_expire(client, admin_token, clock):
    org = await register_org(client, admin_token, make_uscc(3))
    token = await issue_token(client, admin_token, org["id"], ["buyer"], days=1)
    assert (await client.get("/v1/me", headers=bearer(token))).status_code == 200
    clock.advance(timedelta(hours=23, minutes=59))
    assert (await client.get("/v1/me", headers=bearer(token))).status_code == 200
    clock.advance(timedelta(minutes=2))
    response = await client.get("/v1/me", headers=bearer(token))
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]
    listing = await client.get(f"/v1/organisations/{org['id']}/tokens", headers=bearer(admin_token))
    assert listing.json()["items"][0]["status"] == "expired"


async def test_self_service_tokens_cannot_exceed_the_calling_token(client, admin_token):
    org = await register_org(client, admin_token, make_uscc(4), ["seller", "buyer"])
    buyer_only = await issue_token(client, admin_token, org["id"], ["buyer"])
    response = await client.post(
        "/v1/tokens", json={"name": "escalate", "roles": ["seller"]}, headers=bearer(buyer_only)
    )
    assert response.status_code == 403
    assert "seller" in response.json()["detail"]
    response = await client.post(
        "/v1/tokens", json={"name": "same", "roles": ["buyer"]}, headers=bearer(buyer_only)
    )
    assert response.status_code == 201


async def test_a_token_cannot_carry_a_role_its_organisation_lacks(client, admin_token):
    org = await register_org(client, admin_token, make_uscc(5), ["buyer"])
    response = await client.post(
        f"/v1/organisations/{org['id']}/tokens",
        json={"name": "x", "roles": ["buyer", "seller"]},
        headers=bearer(admin_token),
    )
    assert response.status_code == 422
    assert response.json()["errors"] == [
        {"path": "roles[1]", "message": "organisation lacks role seller", "source": "body"}
    ]


async def test_tokens_are_listed_per_organisation_only(client, admin_token):
    a = await register_org(client, admin_token, make_uscc(6))
    b = await register_org(client, admin_token, make_uscc(7))
    token_a = await issue_token(client, admin_token, a["id"], ["buyer"])
    await issue_token(client, admin_token, b["id"], ["buyer"])
    listing = (await client.get("/v1/tokens", headers=bearer(token_a))).json()
    assert {t["org_id"] for t in listing["items"]} == {a["id"]}
