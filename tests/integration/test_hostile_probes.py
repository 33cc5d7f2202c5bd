"""SQL injection and path traversal probes in path, query and body parameters are harmless.

Every probe gets a clean answer: a 4xx problem, or (for free text a route stores) a 2xx whose
stored value is the probe itself, byte for byte. Afterwards no table lost or gained rows the
probes did not create, and no answer leaked a file, a database error or a token hash.
"""

import pytest

from tests.kit.api import bearer, issue_token, make_uscc, org_body, register_org

SQL_INJECTION = [
    "' OR '1'='1",
    "'; DROP TABLE organisations; --",
    "1); DELETE FROM api_tokens; --",
    '" OR 1=1 --',
    "') UNION SELECT token_hash::text FROM api_tokens --",
    "1' AND 1=CAST((SELECT version()) AS int) --",
    "$1",
    "%' OR name LIKE '%",
    "\\'; TRUNCATE audit_log; --",
]
TRAVERSAL = [
    "../../../../etc/passwd",
    "..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2fpyproject.toml",
    "....//....//etc/passwd",
    "..\\..\\..\\pyproject.toml",
    "/etc/passwd",
    "%252e%252e%252fetc%252fpasswd",
]
PROBES = SQL_INJECTION + TRAVERSAL
# What must never appear in an answer: file contents, database internals, stored secrets.
LEAKS = ["root:x:0:0", "[project]", "syntax error", "PostgreSQL", "asyncpg", "Traceback", "\\x"]
TABLES = ["organisations", "api_tokens", "products", "audit_log", "policy_lists"]


def assert_clean(response, *, stored=None):
    assert response.status_code < 500, (response.request.url, response.text)
    text = response.text
    for leak in LEAKS:
        assert leak not in text, (response.request.url, leak, text[:500])
    if response.status_code >= 400:
        assert response.headers["content-type"].startswith("application/problem+json"), text
        assert response.json()["code"], text
    elif stored is not None:
        assert stored in response.json().values(), (stored, text[:500])


@pytest.fixture
async def world(client, admin_token, pool):
    market = await register_org(client, admin_token, make_uscc(1))
    me = (await client.get("/v1/me", headers=bearer(admin_token))).json()
    tokens = {
        "admin": admin_token,
        "market": await issue_token(client, admin_token, market["id"], ["seller", "buyer"]),
        "reviewer": await issue_token(client, admin_token, me["organisation"]["id"], ["reviewer"]),
    }
    product = await client.post(
        "/v1/products", json={"name_zh": "样例数据"}, headers=bearer(tokens["market"])
    )
    assert product.status_code == 201, product.text
    return {"tokens": tokens, "market": market, "product": product.json()}


async def counts(pool):
    return {table: await pool.fetchval(f"SELECT count(*) FROM {table}") for table in TABLES}


QUERY_PROBES = [
    ("/v1/products", "q", None),
    ("/v1/products", "sector", None),
    ("/v1/products", "seller", None),
    ("/v1/products", "cursor", None),
    ("/v1/products", "recognised_from", None),
    ("/v1/products", "sort", None),
    ("/v1/catalog", "cursor", None),
    ("/v1/audit", "action", "admin"),
    ("/v1/audit", "subject_type", "admin"),
    ("/v1/audit", "subject_id", "admin"),
    ("/v1/organisations", "role", "admin"),
    ("/v1/reviews", "kind", "reviewer"),
    ("/v1/reviews", "rule", "reviewer"),
    ("/v1/reviews", "state", "reviewer"),
    ("/v1/orders", "cursor", "market"),
    ("/v1/trades", "cursor", "market"),
    ("/v1/ledger/consistency", "first", None),
    ("/v1/ledger/entries", "after", "admin"),
]


async def test_probes_in_query_parameters_are_harmless(client, world, pool):
    before = await counts(pool)
    for path, name, who in QUERY_PROBES:
        headers = bearer(world["tokens"][who]) if who else {}
        for probe in PROBES:
            response = await client.get(path, params={name: probe}, headers=headers)
            assert_clean(response)
            if response.status_code == 200 and path == "/v1/products":
                # A search for the probe finds nothing: it is matched as text, never run.
                assert response.json()["items"] == [], (name, probe)
    assert await counts(pool) == before


PATH_TEMPLATES = [
    ("GET", "/v1/policy/lists/{}", None),
    ("GET", "/v1/certificates/{}/status", None),
    ("GET", "/v1/products/{}", "market"),
    ("GET", "/v1/products/{product}/plans/{}/offer", "market"),
    ("GET", "/v1/organisations/{}", "admin"),
    ("POST", "/v1/tokens/{}/revoke", "admin"),
    ("GET", "/v1/trades/{}/receipt", "market"),
    ("GET", "/v1/{}", None),
    ("GET", "/{}", None),
]


async def test_probes_in_path_parameters_are_harmless(client, world, pool):
    before = await counts(pool)
    for method, template, who in PATH_TEMPLATES:
        headers = bearer(world["tokens"][who]) if who else {}
        for probe in PROBES:
            path = template.replace("{product}", world["product"]["id"]).replace("{}", probe)
            response = await client.request(method, path, headers=headers)
            assert_clean(response)
            assert response.status_code in (400, 404, 405, 409, 422), (path, response.text)
    assert await counts(pool) == before


async def test_traversal_never_reaches_a_file_through_the_docs_paths(client):
    for probe in TRAVERSAL:
        response = await client.get(f"/schema/{probe}")
        # The docs router answers unknown paths itself (an HTML 404): never a file.
        assert response.status_code == 404, (probe, response.text[:200])
        for leak in ("root:x:0:0", "[project]"):
            assert leak not in response.text


async def test_probes_in_bodies_are_stored_as_text_or_refused(client, world, pool):
    admin, market = world["tokens"]["admin"], world["tokens"]["market"]
    product_id = world["product"]["id"]
    before = await counts(pool)
    for index, probe in enumerate(PROBES):
        # Free text a route stores comes back exactly as sent.
        response = await client.patch(
            f"/v1/products/{product_id}",
            json={"name_zh": f"样例{probe}"},
            headers=bearer(market),
        )
        assert_clean(response)
        if response.status_code == 200:
            assert response.json()["draft"]["name_zh"] == f"样例{probe}"
        response = await client.post(
            "/v1/tokens", json={"name": probe[:100], "roles": ["buyer"]}, headers=bearer(market)
        )
        assert_clean(response)
        # Structured fields refuse anything that is not their shape.
        body = org_body(make_uscc(100 + index), name=f"上海{probe}有限公司") | {"region": probe}
        assert_clean(await client.post("/v1/organisations", json=body, headers=bearer(admin)))
        body = org_body(probe) | {"name": "上海测试有限公司"}
        response = await client.post("/v1/organisations", json=body, headers=bearer(admin))
        assert_clean(response)
        assert response.status_code in (400, 422)
        response = await client.post(
            "/v1/policy/evaluate",
            json={"document": {"product": {"sector": probe}}, "version": probe},
            headers=bearer(market),
        )
        assert_clean(response)
    after = await counts(pool)
    created_tokens = after["api_tokens"] - before["api_tokens"]
    assert created_tokens <= len(PROBES)
    assert after["organisations"] == before["organisations"]
    assert after["products"] == before["products"]
    # The market's own token, the admin's and the product are untouched.
    assert (await client.get("/v1/me", headers=bearer(market))).status_code == 200
    assert (await client.get("/v1/me", headers=bearer(admin))).status_code == 200
    response = await client.get(f"/v1/products/{product_id}", headers=bearer(market))
    assert response.status_code == 200


async def test_nul_characters_are_refused_naming_the_field(client, world):
    market = world["tokens"]["market"]
    response = await client.patch(
        f"/v1/products/{world['product']['id']}",
        json={"summary": "a\x00b"},
        headers=bearer(market),
    )
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "nul_character"
    assert response.json()["errors"][0]["path"] == "summary"
    response = await client.get("/v1/products", params={"q": "a\x00"})
    assert response.status_code == 422 and response.json()["errors"][0]["path"] == "q"
    response = await client.get("/v1/policy/lists/2026%00")
    assert response.status_code == 422 and response.json()["code"] == "nul_character"
