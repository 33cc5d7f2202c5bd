"""The HTTP platform: problem details for every error, request ids, OpenAPI, no secrets in logs."""

import dataclasses

from litestar import get
from litestar.testing import AsyncTestClient
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from exchange.app import create_app
from exchange.platform.auth import PUBLIC
from tests.kit.api import assert_problem, bearer, make_uscc, org_body


async def test_unknown_route_is_a_problem(client):
    body = assert_problem(await client.get("/v1/nowhere"), 404, "not_found")
    assert "/v1/nowhere" in body["detail"]


async def test_wrong_method_is_a_problem_naming_the_allowed_ones(client):
    body = assert_problem(await client.delete("/health/live"), 405, "method_not_allowed")
    assert "GET" in body["detail"]


async def test_malformed_json_is_a_problem(client, admin_token):
    response = await client.post(
        "/v1/organisations",
        content=b'{"name": ',
        headers={**bearer(admin_token), "content-type": "application/json"},
    )
    body = assert_problem(response, 400, "malformed_json")
    assert "JSON" in body["detail"]


async def test_oversized_body_is_a_problem(settings, clock, admin_token):
    small = dataclasses.replace(settings, max_body_bytes=2048)
    async with AsyncTestClient(app=create_app(small, clock=clock)) as client:
        body = org_body(make_uscc(1)) | {"name": "大" * 3000}
        response = await client.post("/v1/organisations", json=body, headers=bearer(admin_token))
        assert_problem(response, 413, "payload_too_large")


async def test_request_ids_are_echoed_when_sane_and_made_up_otherwise(client):
    mine = await client.get("/health/live", headers={"X-Request-ID": "client-req-12345"})
    assert mine.headers["x-request-id"] == "client-req-12345"
    hostile = await client.get("/health/live", headers={"X-Request-ID": "bad id\r\nx"})
    assert hostile.headers["x-request-id"] != "bad id\r\nx"
    assert len(hostile.headers["x-request-id"]) == 32
    a = await client.get("/health/live")
    b = await client.get("/health/live")
    assert a.headers["x-request-id"] != b.headers["x-request-id"]


async def test_an_unexpected_failure_is_a_500_problem_with_its_cause_logged(settings, clock):
    @get("/boom", opt=PUBLIC)
    async def boom() -> None:
        raise ZeroDivisionError("internal secret 42")

    app = create_app(settings, clock=clock)
    app.register(boom)
    async with AsyncTestClient(app=app) as client:
        with capture_logs(processors=[merge_contextvars]) as logs:
            response = await client.get("/boom")
    body = assert_problem(response, 500, "internal_error")
    assert "internal secret 42" not in body["detail"]  # no internals leak to the caller
    failures = [entry for entry in logs if entry["event"] == "unhandled_error"]
    assert len(failures) == 1
    assert failures[0]["error_type"] == "ZeroDivisionError"
    assert failures[0]["request_id"] == body["request_id"]
    assert isinstance(failures[0]["exc_info"], ZeroDivisionError)


async def test_tokens_never_reach_the_logs(client, admin_token):
    with capture_logs(processors=[merge_contextvars]) as logs:
        await client.get("/v1/me", headers=bearer(admin_token))
        response = await client.post(
            "/v1/organisations", json=org_body(make_uscc(2)), headers=bearer(admin_token)
        )
        org_id = response.json()["id"]
        issued = await client.post(
            f"/v1/organisations/{org_id}/tokens",
            json={"name": "n", "roles": ["buyer"]},
            headers=bearer(admin_token),
        )
        await client.get("/v1/me", headers=bearer(issued.json()["token"]))
    text = repr(logs)
    assert logs, "expected request log lines"
    assert admin_token not in text
    assert issued.json()["token"] not in text
    assert any(entry.get("org_id") for entry in logs)  # the org id is bound after auth


async def test_openapi_and_docs_are_public(client):
    schema = await client.get("/schema/openapi.json")
    assert schema.status_code == 200
    document = schema.json()
    assert document["openapi"].startswith("3.1")
    operation_ids = {
        op["operationId"]
        for path in document["paths"].values()
        for op in path.values()
        if isinstance(op, dict) and "operationId" in op
    }
    assert {
        "registerOrganisation",
        "issueToken",
        "revokeToken",
        "listAudit",
        "ready",
    } <= operation_ids
    docs = await client.get("/schema")
    assert docs.status_code == 200
    assert "text/html" in docs.headers["content-type"]
