"""Registering and updating organisations through the API."""

import pytest

from tests.kit.api import VALID_USCC, bearer, make_uscc, org_body, register_org


@pytest.mark.parametrize("code", VALID_USCC)
async def test_reference_valid_uscc_registers(client, admin_token, code):
    response = await client.post(
        "/v1/organisations", json=org_body(code.lower()), headers=bearer(admin_token)
    )
    assert response.status_code == 201, response.text
    assert response.json()["uscc"] == code  # stored upper case


@pytest.mark.parametrize(
    ("code", "rule", "says"),
    [
        ("91350100M000100Y4Z", "check", "check character: expected 3, got Z"),
        ("914403001922038217", "check", "check character: expected 6, got 7"),
        ("9144030019220382", "length", "must be 18 characters, got 16"),
        ("914403001922O38216", "alphabet", "'O' at position 13"),
        ("91AB03001922038216", "division", "administrative division code"),
    ],
)
async def test_reference_invalid_uscc_is_422_naming_the_failed_check(
    client, admin_token, code, rule, says
):
    response = await client.post(
        "/v1/organisations", json=org_body(code), headers=bearer(admin_token)
    )
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "invalid_input"
    assert problem["rule"] == rule
    assert says in problem["detail"]
    assert problem["errors"][0]["path"] == "uscc"


async def test_duplicate_uscc_is_409_and_nothing_is_written(client, admin_token, pool):
    await register_org(client, admin_token, VALID_USCC[0])
    audit_before = await pool.fetchval("SELECT count(*) FROM audit_log")
    response = await client.post(
        "/v1/organisations", json=org_body(VALID_USCC[0].lower()), headers=bearer(admin_token)
    )
    assert response.status_code == 409
    assert response.json()["code"] == "conflict"
    assert VALID_USCC[0] in response.json()["detail"]
    assert (
        await pool.fetchval("SELECT count(*) FROM organisations WHERE uscc = $1", VALID_USCC[0])
        == 1
    )
    assert await pool.fetchval("SELECT count(*) FROM audit_log") == audit_before


async def test_every_bad_field_is_listed_with_its_path(client, admin_token):
    body = {
        "name": "",
        "uscc": 5,
        "roles": ["seller", "trader"],
        "region": "31000",
        "contact": {"name": "张三", "email": "not-an-email"},
        "surprise": True,
    }
    response = await client.post("/v1/organisations", json=body, headers=bearer(admin_token))
    assert response.status_code == 422, response.text
    problem = response.json()
    assert problem["code"] == "validation_failed"
    paths = {error["path"] for error in problem["errors"]}
    assert paths == {
        "name",
        "uscc",
        "roles[1]",
        "region",
        "contact.email",
        "contact.phone",
        "surprise",
    }
    by_path = {error["path"]: error["message"] for error in problem["errors"]}
    assert by_path["contact.phone"] == "required field missing"
    assert by_path["surprise"] == "unknown field"
    assert "str" in by_path["uscc"]


async def test_staff_and_market_roles_never_mix(client, admin_token):
    response = await client.post(
        "/v1/organisations",
        json=org_body(make_uscc(7), ["seller", "reviewer"]),
        headers=bearer(admin_token),
    )
    assert response.status_code == 422
    assert "never both" in response.json()["detail"]


async def test_members_read_their_own_organisation(client, admin_token):
    from tests.kit.api import issue_token

    org = await register_org(client, admin_token, make_uscc(3))
    token = await issue_token(client, admin_token, org["id"], ["buyer"])
    response = await client.get(f"/v1/organisations/{org['id']}", headers=bearer(token))
    assert response.status_code == 200
    assert response.json()["uscc"] == make_uscc(3)


async def test_update_changes_only_given_fields_and_removing_a_role_disarms_tokens(
    client, admin_token
):
    from tests.kit.api import issue_token

    org = await register_org(client, admin_token, make_uscc(4), ["seller", "buyer"])
    seller_token = await issue_token(client, admin_token, org["id"], ["seller", "buyer"])
    response = await client.patch(
        f"/v1/organisations/{org['id']}", json={"roles": ["buyer"]}, headers=bearer(admin_token)
    )
    assert response.status_code == 200, response.text
    assert response.json()["roles"] == ["buyer"]
    assert response.json()["name"] == org["name"]
    me = await client.get("/v1/me", headers=bearer(seller_token))
    assert me.json()["roles"] == ["buyer"]


async def test_listing_organisations_pages_by_cursor_without_repeats(client, admin_token):
    created = {
        (await register_org(client, admin_token, make_uscc(100 + i)))["id"] for i in range(5)
    }
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, "role": "seller"} | ({"cursor": cursor} if cursor else {})
        page = (
            await client.get("/v1/organisations", params=params, headers=bearer(admin_token))
        ).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 5
    assert set(seen) == created


async def test_a_forged_cursor_is_a_422_naming_cursor(client, admin_token):
    response = await client.get(
        "/v1/organisations", params={"cursor": "!!!"}, headers=bearer(admin_token)
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["path"] == "cursor"
