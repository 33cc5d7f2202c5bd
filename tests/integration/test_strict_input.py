"""Strict input over HTTP (issue 17): bodies that are not UTF-8 are 400, an integer is an integer
in a JSON body, money stays within 2^53 - 1 fen, the access log says the status sent, and an
unreachable PostgreSQL is a 503 with Retry-After rather than a 500."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from exchange.app import create_app
from exchange.identity.service import IdentityService
from exchange.platform.audit import Actor
from exchange.platform.db import connect, create_pool, migrate
from exchange.platform.embedded import EmbeddedPostgres
from exchange.platform.http import DATABASE_RETRY_AFTER_S
from exchange.platform.money import MAX_FEN
from tests.kit.api import assert_problem, bearer, make_uscc, org_body, register_org
from tests.kit.documents import metadata
from tests.kit.market import deposit, list_product, order_body, place

JSON = {"content-type": "application/json"}
NOT_INTEGERS = ["100", 100.0, "1e2"]


def paths(problem: dict[str, Any]) -> set[str]:
    return {error["path"] for error in problem["errors"]}


def messages(problem: dict[str, Any], path: str) -> list[str]:
    return [error["message"] for error in problem["errors"] if error["path"] == path]


# --- bytes that are not UTF-8 ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b'{"name": "\xff\xfe"}', "application/json"),  # inside a string
        (b'{"\xc3": 1}', "application/json"),  # a key cut short
        (b'{"name": "\xed\xa0\x80"}', "application/problem+json"),  # an encoded surrogate
        (
            b'{"name": "\xff"}',
            "text/plain",
        ),  # not declared JSON: the handler decodes it all the same
        (b'{"name": "\xff", "a": ' + b"[" * 40 + b"]" * 40 + b"}", "application/json"),  # deep
        (b'{"name": "\xff\\u0000"}', "application/json"),  # a NUL too: the input guard decodes
    ],
)
async def test_a_body_that_is_not_utf8_is_a_400_problem(client, admin_token, body, content_type):
    response = await client.post(
        "/v1/organisations",
        content=body,
        headers={**bearer(admin_token), "content-type": content_type},
    )
    problem = assert_problem(response, 400, "malformed_json")
    assert "not UTF-8" in problem["detail"]


async def test_invalid_utf8_in_the_query_or_the_path_is_no_500(client, admin_token):
    for url in ("/v1/products?q=%FF%FE", "/v1/audit?action=%C3", "/v1/policy/lists/%FF"):
        response = await client.get(url, headers=bearer(admin_token))
        assert response.status_code < 500, (url, response.text)
        assert response.headers["content-type"].startswith("application/")


# --- an integer is an integer -------------------------------------------------------------------


@pytest.mark.parametrize("amount", NOT_INTEGERS)
async def test_a_deposit_that_is_not_an_integer_is_a_422_naming_it(
    client, admin_token, pool, amount
):
    org = await register_org(client, admin_token, make_uscc(1), ["buyer"])
    response = await deposit(client, admin_token, org["id"], amount, "bank-1")
    problem = assert_problem(response, 422, "validation_failed")
    assert paths(problem) == {"amount_fen"}
    assert "int" in messages(problem, "amount_fen")[0]
    assert await pool.fetchval("SELECT count(*) FROM movements") == 0
    # The integer itself is fine.
    assert (await deposit(client, admin_token, org["id"], 100, "bank-1")).status_code == 201


@pytest.mark.parametrize("price", NOT_INTEGERS)
async def test_a_plan_price_that_is_not_an_integer_is_a_422_naming_it(market, client, price):
    document = metadata()
    document["plans"][0]["price_fen"] = price
    response = await client.post("/v1/products", json=document, headers=bearer(market["seller"]))
    problem = assert_problem(response, 422, "validation_failed")
    assert paths(problem) == {"plans[0].price_fen"}
    assert "int" in messages(problem, "plans[0].price_fen")[0]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("quantity", "2"),
        ("quantity", 2.0),
        ("term_days", "1e2"),
        ("spend_cap_fen", "5000"),
        ("redistribution", "false"),  # a boolean is a boolean too
        ("redistribution", 0),
    ],
)
async def test_order_fields_take_their_own_json_type_only(client, trade, field, value):
    response = await place(client, trade, order_body(str(uuid.uuid4()), **{field: value}))
    problem = assert_problem(response, 422, "validation_failed")
    assert paths(problem) == {field}


async def test_query_parameters_are_still_read_from_their_text(client, admin_token):
    # A query string has no types: "2" is the integer 2 there, as before.
    response = await client.get("/v1/audit?limit=2", headers=bearer(admin_token))
    assert response.status_code == 200, response.text
    assert len(response.json()["items"]) <= 2
    bad = await client.get("/v1/audit?limit=two", headers=bearer(admin_token))
    problem = assert_problem(bad, 400, "validation_failed")
    assert paths(problem) == {"limit"}


# --- money within 2^53 - 1 fen -------------------------------------------------------------------


async def test_a_plan_price_beyond_its_bound_is_a_422_naming_it_and_the_bound(market, client):
    document = metadata()
    document["plans"][0]["price_fen"] = 10**13 + 1
    response = await client.post("/v1/products", json=document, headers=bearer(market["seller"]))
    problem = assert_problem(response, 422, "validation_failed")
    assert paths(problem) == {"plans[0].price_fen"}
    assert str(10**13) in messages(problem, "plans[0].price_fen")[0]


@pytest.mark.parametrize(
    ("override", "value", "field"),
    [
        ("plans", [metadata()["plans"][0] | {"price_fen": 2**53}], "plans[0].price_fen"),
        ("manual__scale__rows", 2**60, "manual.scale.rows"),
        ("manual__sample__rows", [{"id": "x"}, {"count": -(2**70)}], "manual.sample.rows[1].count"),
    ],
)
async def test_an_integer_beyond_2_53_anywhere_in_a_body_is_a_422_naming_it(
    market, client, override, value, field
):
    # Stored, it would fail later: in the digest of the product's canonical JSON (a 500).
    document = metadata(**{override: value})
    response = await client.post("/v1/products", json=document, headers=bearer(market["seller"]))
    problem = assert_problem(response, 422, "integer_out_of_range")
    assert paths(problem) == {field}
    assert str(MAX_FEN) in messages(problem, field)[0]
    assert problem["max_integer"] == MAX_FEN
    # A long run of digits in a string is text, and fine.
    text = metadata(manual__sample__rows=[{"id": "9144030019220382160"}])
    response = await client.post("/v1/products", json=text, headers=bearer(market["seller"]))
    assert response.status_code == 201, response.text


async def test_a_spend_cap_beyond_2_53_fen_is_a_422_naming_it_and_the_bound(client, trade):
    for cap, code, bound in ((10**12 + 1, "validation_failed", 10**12),
                             (2**53, "integer_out_of_range", MAX_FEN)):  # fmt: skip
        body = order_body(str(uuid.uuid4()), plan_id="meter", spend_cap_fen=cap)
        problem = assert_problem(await place(client, trade, body), 422, code)
        assert paths(problem) == {"spend_cap_fen"}
        assert str(bound) in messages(problem, "spend_cap_fen")[0]


async def test_an_order_costing_more_than_2_53_fen_is_a_422_naming_quantity(client, trade, pool):
    document = metadata()
    document["plans"][0]["price_fen"] = 10**13  # the most a plan may cost
    product_id = await list_product(client, trade, document)
    # 10^13 x 1,000 = 10^16 fen; 10^13 x 900 = 9 x 10^15 fits alone, but not with the 1 % fee.
    for quantity in (1_000, 900):
        body = order_body(product_id, quantity=quantity)
        problem = assert_problem(await place(client, trade, body), 422, "invalid_input")
        assert paths(problem) == {"quantity"}
        assert str(MAX_FEN) in messages(problem, "quantity")[0]
        assert str(MAX_FEN) in problem["detail"]
        assert problem["max_fen"] == MAX_FEN
    assert await pool.fetchval("SELECT count(*) FROM orders") == 0
    # Just within the bound the order is placed, and its contract signs as any other.
    response = await place(client, trade, order_body(product_id, quantity=800))
    assert response.status_code == 201, response.text
    assert response.json()["price_fen"] == 8 * 10**15
    assert response.json()["price_fen"] + response.json()["fee_fen"] <= MAX_FEN
    contract_id = response.json()["contract_id"]
    contract = await client.get(f"/v1/contracts/{contract_id}", headers=bearer(trade["buyer"]))
    assert contract.status_code == 200, contract.text


# --- the access log says what was sent -------------------------------------------------------------


def request_lines(logs: list[Any]) -> list[int]:
    return [entry["status"] for entry in logs if entry["event"] == "request"]


async def test_the_request_log_records_the_status_actually_sent(settings, clock, admin_token):
    app = create_app(
        dataclasses.replace(settings, rate_limit_per_second=1, rate_limit_burst=3), clock=clock
    )
    app.state.rate_limits.clock = lambda: 1000.0  # no refill: the admin token has 3 requests
    admin = bearer(admin_token)
    async with AsyncTestClient(app=app) as client:
        bad_name = {**org_body(make_uscc(1)), "name": 5}
        cases = [
            # refused by the input guard, before any route's exception boundary
            (lambda: client.get("/v1/audit?action=a%00b", headers=admin), 422),
            (lambda: client.get("/v1/policy/lists/" + "x" * 1001), 400),
            # refused by the handler: a body that is not UTF-8, a value of the wrong type
            (lambda: client.post("/v1/organisations", content=b'{"a": "\xff"}',
                                 headers={**admin, **JSON}), 400),
            (lambda: client.post("/v1/organisations", json=bad_name, headers=admin), 422),
            # refused by the rate limiter, before any route's exception boundary
            (lambda: client.get("/v1/me", headers=admin), 429),
            (lambda: client.get("/health/live"), 200),
        ]  # fmt: skip
        for call, status in cases:
            with capture_logs(processors=[merge_contextvars]) as logs:
                response = await call()
            assert response.status_code == status, response.text
            assert request_lines(logs) == [status], logs
            line = next(entry for entry in logs if entry["event"] == "request")
            assert line["request_id"] == response.headers["x-request-id"]


# --- PostgreSQL unreachable: 503 with Retry-After ----------------------------------------------------


async def test_an_unreachable_postgres_is_a_503_with_retry_after(settings, clock, tmp_path: Path):
    """The app runs against a PostgreSQL of its own, which is then stopped: every request that
    needs the database is a 503 problem saying so, with Retry-After, and one warning apiece."""
    postgres = EmbeddedPostgres(tmp_path)
    await asyncio.to_thread(postgres.start)
    try:
        url = postgres.url("postgres")
        conn = await connect(url)
        try:
            await migrate(conn)
        finally:
            await conn.close()
        pool = await create_pool(url, max_size=2)
        try:
            issued, _ = await IdentityService(pool, clock).bootstrap(Actor.cli("test"), "测试")
        finally:
            await pool.close()
        own = dataclasses.replace(settings, database_url=url, peer_poll_ms=0)
        async with AsyncTestClient(app=create_app(own, clock=clock)) as client:
            assert (await client.get("/v1/me", headers=bearer(issued.token))).status_code == 200
            await asyncio.to_thread(postgres.stop)
            calls = [
                lambda: client.get("/v1/products"),  # the public catalogue
                lambda: client.get("/v1/me", headers=bearer(issued.token)),
                lambda: place(
                    client, {"buyer": issued.token}, order_body(str(uuid.uuid4()))
                ),  # placing an order
                lambda: client.get("/v1/products"),  # and again, with the pool emptied
            ]
            for call in calls:
                with capture_logs(processors=[merge_contextvars]) as logs:
                    response = await call()
                problem = assert_problem(response, 503, "dependency_unavailable")
                assert "PostgreSQL" in problem["detail"]
                assert response.headers["retry-after"] == str(DATABASE_RETRY_AFTER_S)
                assert problem["retry_after_s"] == DATABASE_RETRY_AFTER_S
                warnings = [e for e in logs if e["log_level"] == "warning"]
                assert len(warnings) == 1, logs
                assert warnings[0]["code"] == "dependency_unavailable"
                assert warnings[0]["cause"]  # what asyncpg said, for the operator
                assert warnings[0]["request_id"] == problem["request_id"]
                assert not [e for e in logs if e["log_level"] == "error"], logs
                assert request_lines(logs) == [503]
    finally:
        await asyncio.to_thread(postgres.stop)
