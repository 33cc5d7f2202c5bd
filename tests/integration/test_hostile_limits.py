"""Limits on hostile or greedy clients: rate per token and address, JSON depth, body size, pages."""

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st
from litestar.testing import AsyncTestClient

from exchange.app import create_app
from exchange.platform.limits import (
    MAX_JSON_DEPTH,
    MAX_PARAMETER_CHARS,
    Gcra,
    RateLimits,
    too_deep_at,
)
from exchange.platform.settings import Settings, SettingsError
from tests.kit.api import assert_problem, bearer, issue_token, make_uscc, register_org

# --- the bucket arithmetic, without HTTP -------------------------------------------------------


def test_a_burst_is_served_then_the_next_request_waits_one_interval():
    bucket = Gcra(rate=10, burst=5)
    assert [bucket.take("t", 100.0) for _ in range(5)] == [0.0] * 5
    wait = bucket.take("t", 100.0)
    assert wait == pytest.approx(0.1)
    assert bucket.take("t", 100.0 + wait) == 0.0  # refilled by exactly one request
    assert bucket.take("other", 100.0) == 0.0  # keys do not share a bucket


def test_idle_keys_are_forgotten_so_memory_follows_recent_clients_only():
    bucket = Gcra(rate=10, burst=5)
    for i in range(1000):
        bucket.take(f"k{i}", 0.0)
    bucket.sweep(0.05)
    assert len(bucket.arrivals) == 1000  # still owing at 0.05 s
    bucket.sweep(0.11)
    assert bucket.arrivals == {}


@given(
    rate=st.integers(1, 50),
    burst=st.integers(1, 20),
    gaps=st.lists(st.floats(0, 0.5, allow_nan=False), min_size=1, max_size=200),
)
def test_no_window_ever_serves_more_than_burst_plus_rate_times_its_length(rate, burst, gaps):
    bucket = Gcra(rate=rate, burst=burst)
    now, served = 0.0, []
    for gap in gaps:
        now += gap
        if bucket.take("k", now) == 0.0:
            served.append(now)
    for i, start in enumerate(served):
        for j in range(i, len(served)):
            in_window = j - i + 1
            assert in_window <= burst + rate * (served[j] - start) + 1e-6


def test_a_refused_request_is_not_charged():
    bucket = Gcra(rate=1, burst=1)
    assert bucket.take("k", 0.0) == 0.0
    for _ in range(100):
        assert bucket.take("k", 0.5) == pytest.approx(0.5)
    assert bucket.take("k", 1.0) == 0.0


def test_failed_authentications_empty_the_addresss_bucket_for_every_token():
    now = [0.0]
    limits = RateLimits.configured(100, 100, anonymous_per_second=1)
    limits.clock = lambda: now[0]
    limits.failed_authentication("10.0.0.7")
    limits.failed_authentication("10.0.0.7")
    assert limits.admit("dxt_valid", "10.0.0.7") > 0
    assert limits.admit("dxt_valid", "10.0.0.8") == 0.0  # another address is not affected
    now[0] = 1.5
    assert limits.admit("dxt_valid", "10.0.0.7") == 0.0


def test_zero_turns_each_limit_off():
    limits = RateLimits.configured(0, 1, anonymous_per_second=0)
    assert not limits.enabled
    assert all(limits.admit(None, "a") == 0.0 for _ in range(10_000))


def test_rate_limit_settings_are_read_and_checked():
    settings = Settings.from_env(
        {
            "DATAEX_RATE_LIMIT_PER_SECOND": "0",
            "DATAEX_RATE_LIMIT_BURST": "7",
            "DATAEX_RATE_LIMIT_ANONYMOUS_PER_SECOND": "9",
        }
    )
    assert (
        settings.rate_limit_per_second,
        settings.rate_limit_burst,
        settings.rate_limit_anonymous_per_second,
    ) == (0, 7, 9)
    assert Settings.from_env(settings.to_env()) == settings
    with pytest.raises(SettingsError, match="DATAEX_RATE_LIMIT_PER_SECOND: must be between"):
        Settings.from_env({"DATAEX_RATE_LIMIT_PER_SECOND": "-1"})


def test_defaults_let_fifty_tokens_place_five_hundred_orders_a_second():
    defaults = Settings()
    assert defaults.rate_limit_per_second >= 10 * 10  # 500/s over 50 tokens is 10/s each
    assert defaults.rate_limit_burst >= defaults.rate_limit_per_second


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


def nested(depth: int) -> bytes:
    return b'{"a":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


def test_depth_is_measured_in_objects_and_arrays():
    assert too_deep_at(nested(MAX_JSON_DEPTH)) is None
    assert too_deep_at(nested(MAX_JSON_DEPTH + 1)) == ".".join(["a"] * MAX_JSON_DEPTH)
    assert too_deep_at(b"[" * 5000 + b"]" * 5000) == "$"  # past msgspec's own recursion limit
    assert too_deep_at(b'{"s": "' + b"[" * 500 + b'"}') is None  # brackets inside a string
    wide = b"[" + b",".join([b"[1]"] * 1000) + b"]"
    assert too_deep_at(wide) is None  # many brackets, little depth
    assert too_deep_at(b"[" * 100) is None  # malformed: left to the JSON decoder's message


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
