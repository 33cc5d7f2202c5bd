"""Limits on hostile or greedy clients over HTTP: rate per token and address, JSON depth, body
size, pages (the buckets' arithmetic alone: tests/unit/test_hostile_limits.py)."""

import dataclasses

from litestar.testing import AsyncTestClient

from exchange.app import create_app
from exchange.platform.limits import (
    MAX_JSON_DEPTH,
    MAX_PARAMETER_CHARS,
)
from tests.kit.api import assert_problem, bearer, issue_token, make_uscc, register_org
from tests.kit.documents import nested

# --- the bucket arithmetic, without HTTP -------------------------------------------------------


# --- over HTTP ---------------------------------------------------------------------------------


def limited_app(settings, clock, **changes: int):
    """An app with these limits and its buckets' clock frozen, so no test depends on speed."""
    app = create_app(dataclasses.replace(settings, **changes), clock=clock)
    app.state.rate_limits.clock = lambda: 1000.0
    return app


async def test_a_token_past_its_burst_gets_429_with_retry_after(settings, clock, admin_token):
    app = limited_app(settings, clock, rate_limit_per_second=1, rate_limit_burst=3)
    async with AsyncTestClient(app=app) as client:
        market = await register_org(client, admin_token, make_uscc(1))
        buyer = await issue_token(client, admin_token, market["id"], ["buyer"])
        statuses = [(await client.get("/v1/me", headers=bearer(buyer))).status_code]
        statuses += [(await client.get("/v1/me", headers=bearer(buyer))).status_code]
        statuses += [(await client.get("/v1/me", headers=bearer(buyer))).status_code]
        assert statuses == [200, 200, 200]
        response = await client.get("/v1/me", headers=bearer(buyer))
        body = assert_problem(response, 429, "too_many_requests")
        assert int(response.headers["retry-after"]) >= 1
        assert body["retry_after_s"] == int(response.headers["retry-after"])
        assert "per API process" in body["detail"]
        # Waiting as long as Retry-After says is enough.
        app.state.rate_limits.clock = lambda: 1000.0 + body["retry_after_s"]
        assert (await client.get("/v1/me", headers=bearer(buyer))).status_code == 200
        # Another token has its own bucket; health probes are never limited.
        seller = await issue_token(client, admin_token, market["id"], ["seller"])
        assert (await client.get("/v1/me", headers=bearer(seller))).status_code == 200
        for _ in range(10):
            assert (await client.get("/health/live")).status_code == 200


async def test_anonymous_requests_are_limited_per_address(settings, clock):
    app = limited_app(settings, clock, rate_limit_anonymous_per_second=1)  # burst 2
    async with AsyncTestClient(app=app) as client:
        statuses = [(await client.get("/v1/fee-schedules")).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        assert int((await client.get("/v1/fee-schedules")).headers["retry-after"]) >= 1


async def test_guessing_tokens_throttles_the_address(settings, clock, admin_token):
    app = limited_app(settings, clock, rate_limit_anonymous_per_second=1)  # two failures
    async with AsyncTestClient(app=app) as client:
        for guess in ("dxt_00_a", "dxt_00_b"):
            assert (await client.get("/v1/me", headers=bearer(guess))).status_code == 401
        response = await client.get("/v1/me", headers=bearer("dxt_00_c"))
        assert_problem(response, 429, "too_many_requests")
        # Even a good token from that address waits: the address, not the token, is guessing.
        assert (await client.get("/v1/me", headers=bearer(admin_token))).status_code == 429


async def test_limits_off_serve_every_request(settings, clock, admin_token):
    app = limited_app(settings, clock, rate_limit_per_second=0, rate_limit_anonymous_per_second=0)
    async with AsyncTestClient(app=app) as client:
        for _ in range(30):
            assert (await client.get("/v1/me", headers=bearer(admin_token))).status_code == 200
            assert (await client.get("/v1/fee-schedules")).status_code == 200


async def test_json_nested_too_deep_is_a_400_naming_where(client, admin_token):
    for depth, path in ((MAX_JSON_DEPTH + 1, "document." + ".".join(["a"] * 31)), (50_000, "$")):
        body = b'{"document": ' + nested(depth - 1) + b"}" if path != "$" else b"[" * depth
        response = await client.post(
            "/v1/policy/evaluate",
            content=body,
            headers={**bearer(admin_token), "content-type": "application/json"},
        )
        problem = assert_problem(response, 400, "json_too_deep")
        assert problem["errors"][0]["path"] == path, problem
    response = await client.post(
        "/v1/policy/evaluate",
        content=b'{"document": ' + nested(10) + b"}",
        headers={**bearer(admin_token), "content-type": "application/json"},
    )
    assert response.status_code in (400, 422) and response.json()["code"] != "json_too_deep"


async def test_every_problem_an_operation_gives_is_declared_in_openapi(client):
    document = (await client.get("/schema/openapi.json")).json()
    assert "Problem" in document["components"]["schemas"]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            for status in ("400", "404", "422", "500"):
                assert responses[status]["content"]["application/problem+json"], (path, method)
            if not path.startswith("/health/"):
                assert "429" in responses, (method, path)
            if method in ("post", "patch") and "requestBody" in operation:
                assert "413" in responses, (method, path)


async def test_every_page_size_is_bounded_in_the_document_and_by_the_server(client, admin_token):
    """Each list operation's ``limit`` has a documented maximum, and one past it is refused."""
    document = (await client.get("/schema/openapi.json")).json()
    paged = {
        path: next(p["schema"] for p in op.get("parameters", []) if p["name"] == "limit")
        for path, item in document["paths"].items()
        for method, op in item.items()
        if method == "get" and any(p["name"] == "limit" for p in op.get("parameters", []))
    }
    assert len(paged) >= 10, sorted(paged)
    me = (await client.get("/v1/me", headers=bearer(admin_token))).json()
    market = await register_org(client, admin_token, make_uscc(1))
    callers = [
        admin_token,
        await issue_token(client, admin_token, market["id"], ["seller", "buyer"]),
        await issue_token(client, admin_token, me["organisation"]["id"], ["reviewer"]),
    ]
    for path, schema in paged.items():
        assert 1 <= schema["maximum"] <= 1000, (path, schema)
        target = path.replace("{org_id}", me["organisation"]["id"])
        for token in callers:  # the first caller the route lets in
            response = await client.get(
                target, params={"limit": int(schema["maximum"]) + 1}, headers=bearer(token)
            )
            if response.status_code != 403:
                break
        assert response.status_code in (400, 422), (path, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert any(e["path"] == "limit" for e in response.json()["errors"]), response.text


async def test_overlong_path_and_query_parameters_are_a_400_naming_them(client, admin_token):
    long = "x" * (MAX_PARAMETER_CHARS + 1)
    response = await client.get("/v1/audit", params={"action": long}, headers=bearer(admin_token))
    problem = assert_problem(response, 400, "parameter_too_long")
    assert problem["errors"] == [
        {
            "path": "action",
            "message": f"longer than {MAX_PARAMETER_CHARS} characters",
            "source": "query",
        }
    ]
    assert long not in response.text  # never echoed back
    response = await client.get(f"/v1/policy/lists/{long}")
    assert_problem(response, 400, "parameter_too_long")
    assert long not in response.text
    # At the limit it is an ordinary request.
    fine = "x" * MAX_PARAMETER_CHARS
    response = await client.get("/v1/audit", params={"action": fine}, headers=bearer(admin_token))
    assert response.status_code == 200


async def test_every_string_parameter_has_a_documented_maximum_length(client):
    document = (await client.get("/schema/openapi.json")).json()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for parameter in operation.get("parameters", []):
                if parameter["in"] not in ("path", "query"):
                    continue
                schema = parameter["schema"]
                for alternative in schema.get("oneOf", [schema]):
                    if alternative.get("type") == "string" and "enum" not in alternative:
                        assert alternative.get("maxLength", 10**9) <= MAX_PARAMETER_CHARS, (
                            method,
                            path,
                            parameter["name"],
                        )
