"""The audit trail: a row for every change, append-only, readable by admins."""

import asyncpg
import pytest

from tests.kit.api import bearer, issue_token, make_uscc, register_org


async def test_every_identity_change_leaves_one_audit_row(client, admin_token, pool):
    rows = await pool.fetch("SELECT action FROM audit_log ORDER BY id")
    assert [r["action"] for r in rows] == ["organisation.registered", "token.issued"]  # bootstrap

    org = await register_org(client, admin_token, make_uscc(1))
    token = await issue_token(client, admin_token, org["id"], ["buyer"])
    await client.patch(
        f"/v1/organisations/{org['id']}", json={"region": "440300"}, headers=bearer(admin_token)
    )
    # A PATCH that changes nothing is not a change.
    await client.patch(
        f"/v1/organisations/{org['id']}", json={"region": "440300"}, headers=bearer(admin_token)
    )
    token_id = (await client.get("/v1/me", headers=bearer(token))).json()["token_id"]
    await client.post(f"/v1/tokens/{token_id}/revoke", headers=bearer(token))

    rows = await pool.fetch("SELECT * FROM audit_log ORDER BY id")
    assert [r["action"] for r in rows][2:] == [
        "organisation.registered",
        "token.issued",
        "organisation.updated",
        "token.revoked",
    ]
    update = rows[4]
    assert update["subject_id"] == org["id"]
    assert update["before_digest"].startswith("sha256:")
    assert update["after_digest"].startswith("sha256:")
    assert update["before_digest"] != update["after_digest"]
    assert update["detail"] == {"changed": ["region"]}
    revoke = rows[5]
    assert revoke["actor"] == f"token:{token_id}"
    assert str(revoke["actor_org_id"]) == org["id"]


async def test_the_audit_row_carries_the_request_id(client, admin_token, pool):
    response = await client.post(
        "/v1/organisations",
        json={
            "name": "深圳某公司",
            "uscc": make_uscc(2),
            "roles": ["buyer"],
            "region": "440300",
            "contact": {"name": "李四", "email": "li@example.cn", "phone": "+86 755 1234 5678"},
        },
        headers={**bearer(admin_token), "X-Request-ID": "req-audit-0001"},
    )
    assert response.headers["x-request-id"] == "req-audit-0001"
    request_id = await pool.fetchval(
        "SELECT request_id FROM audit_log WHERE subject_id = $1", response.json()["id"]
    )
    assert request_id == "req-audit-0001"


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_log SET action = 'forged'",
        "DELETE FROM audit_log",
        "TRUNCATE audit_log",
    ],
)
async def test_the_audit_table_refuses_update_delete_and_truncate(admin_token, pool, statement):
    before = await pool.fetch("SELECT * FROM audit_log ORDER BY id")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await pool.execute(statement)
    assert await pool.fetch("SELECT * FROM audit_log ORDER BY id") == before


async def test_admins_filter_and_page_the_audit_trail(client, admin_token):
    orgs = [await register_org(client, admin_token, make_uscc(10 + i)) for i in range(5)]
    seen = []
    cursor = None
    while True:
        params = {"action": "organisation.registered", "limit": 2} | (
            {"cursor": cursor} if cursor else {}
        )
        response = await client.get("/v1/audit", params=params, headers=bearer(admin_token))
        assert response.status_code == 200, response.text
        page = response.json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    ids = [entry["id"] for entry in seen]
    assert ids == sorted(ids, reverse=True)  # newest first
    assert len(set(ids)) == len(ids) == 6  # five here and the bootstrap operator
    assert {e["subject_id"] for e in seen} >= {o["id"] for o in orgs}

    one = await client.get(
        "/v1/audit", params={"subject_id": orgs[0]["id"]}, headers=bearer(admin_token)
    )
    assert [e["subject_id"] for e in one.json()["items"]] == [orgs[0]["id"]]
    later = await client.get(
        "/v1/audit", params={"since": "2999-01-01T00:00:00Z"}, headers=bearer(admin_token)
    )
    assert later.json()["items"] == []
