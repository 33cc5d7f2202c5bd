"""The served OpenAPI document (``/schema/openapi.json`` from the real app) says what each
operation answers: every JSON answer has a described shape, every path parameter, request header
and answer header is declared, and every status the API can answer is there. A whole trade's
answers, which generated requests never reach, are checked against it too.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
import schemathesis
from litestar.params import ParameterKwarg
from litestar.routes import HTTPRoute
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from exchange.app import create_app
from exchange.platform.auth import route_access
from exchange.platform.http import REQUIRED_HEADERS, problem_statuses
from exchange.platform.limits import EXEMPT_PREFIXES
from exchange.platform.settings import Settings
from tests.kit.api import bearer
from tests.kit.market import deposit, list_product, order_body, place
from tests.kit.settlement import worker

METHODS = ("get", "put", "post", "patch", "delete")
JSON = re.compile(r"^application/(?:[\w.+-]+\+)?json$")
# Answers that carry no body: Not Modified, No Content.
BODYLESS = {"204", "304"}
# Statuses an operation answers besides its handler's own and its problems (from the route
# table): answers the handler chooses at run time.
ALSO_ANSWERS = {
    ("get", "/health/ready"): {"503"},  # not ready: the readiness report
    ("post", "/v1/accounts/{org_id}/deposits"): {"200"},  # replayed by external_ref
    ("post", "/v1/accounts/{org_id}/withdrawals"): {"200"},  # replayed by external_ref
    ("post", "/v1/products/{product_id}/revisions/{revision}/files/{name}/uploads"): {"200"},
    ("get", "/v1/grants/{grant_id}/files/{name}"): {"206", "304", "416"},
}
# Headers of answers beyond X-Request-ID and traceparent (every answer) and the problems' own.
ANSWER_HEADERS = {
    ("post", "/v1/orders", "201"): {"Idempotent-Replayed"},
    ("get", "/v1/grants/{grant_id}/files/{name}", "200"): {"ETag", "Content-Disposition"},
    ("get", "/v1/grants/{grant_id}/files/{name}", "206"): {"ETag", "Content-Range"},
    ("get", "/v1/grants/{grant_id}/files/{name}", "304"): {"ETag"},
    ("get", "/v1/grants/{grant_id}/files/{name}", "416"): {"Content-Range"},
}
CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture
async def document(client: Any) -> dict[str, Any]:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    served: dict[str, Any] = response.json()
    return served


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    ]


def ref(document: dict[str, Any], node: Any) -> Any:
    """The node a ``$ref`` points to (the node itself when it is none)."""
    while isinstance(node, dict) and "$ref" in node:
        target: Any = document
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def undescribed(document: dict[str, Any], schema: Any, where: str) -> list[str]:
    """Why ``schema`` does not describe a JSON body's shape (nothing when it does): no schema,
    an empty one, an object without properties, an array of undescribed items."""
    schema = ref(document, schema)
    if not isinstance(schema, dict) or not schema:
        return [f"{where}: no schema"]
    alternatives = schema.get("anyOf") or schema.get("oneOf")
    if alternatives:
        return [
            reason
            for i, alternative in enumerate(alternatives)
            for reason in undescribed(document, alternative, f"{where}|{i}")
        ]
    kind = schema.get("type")
    if kind == "object":
        return [] if schema.get("properties") else [f"{where}: an object of no described shape"]
    if kind == "array":
        return undescribed(document, schema.get("items"), f"{where}[]")
    if kind in ("string", "integer", "number", "boolean", "null"):
        return []
    return [f"{where}: untyped schema {schema}"]


def test_the_document_names_every_type_once_by_its_own_name(document):
    schemas = document["components"]["schemas"]
    titles = [schema.get("title") for schema in schemas.values()]
    assert len(set(titles)) == len(titles), sorted(t for t in titles if titles.count(t) > 1)
    # Litestar would key two types of one name by module (exchange_listings_schemas_Product).
    assert [key for key, schema in schemas.items() if schema.get("title", key) != key] == []
    assert {"Product", "ProductPage", "Order", "EvaluationDocument", "ProductAttributes"} <= set(
        schemas
    )
    evaluation = schemas["EvaluationDocument"]["properties"]
    assert evaluation["product"] == {"$ref": "#/components/schemas/ProductAttributes"}
    assert {"$ref": "#/components/schemas/OrderAttributes"} in evaluation["order"]["oneOf"]


def test_every_json_answer_has_a_described_shape(document):
    problems: list[str] = []
    checked = 0
    for method, path, operation in operations(document):
        for status, response in operation["responses"].items():
            where = f"{method.upper()} {path} {status}"
            content = ref(document, response).get("content")
            if not content:
                if status not in BODYLESS:
                    problems.append(f"{where}: no content")
                continue
            for media_type, media in content.items():
                if JSON.match(media_type):
                    checked += 1
                    problems += undescribed(document, media.get("schema"), f"{where} {media_type}")
                else:  # Turtle, the files' bytes
                    schema = media.get("schema") or {}
                    if schema.get("type") != "string":
                        problems.append(f"{where} {media_type}: no string schema")
    assert problems == []
    assert checked > 900


def test_the_answers_the_issue_named_are_typed(document):
    """The nine answers the issue found without a described shape, and the receipt typed as
    a string: each has its schema, and its media type."""

    def schema(method: str, path: str, status: str, media_type: str = "application/json"):
        content = document["paths"][path][method]["responses"][status]["content"]
        return content[media_type]["schema"]

    assert schema("post", "/v1/orders", "201") == {"$ref": "#/components/schemas/Order"}
    assert schema("get", "/v1/contracts/{contract_id}", "200") == {
        "$ref": "#/components/schemas/Contract"
    }
    assert schema("post", "/v1/contracts/{contract_id}/signatures", "200") == {
        "$ref": "#/components/schemas/Contract"
    }
    assert schema("post", "/v1/products/{product_id}/standing-offers", "201") == {
        "$ref": "#/components/schemas/StandingOffer"
    }
    assert schema("get", "/v1/products/{product_id}/plans/{plan_id}/offer", "200") == {
        "$ref": "#/components/schemas/OfferTerms"
    }
    assert schema("get", "/v1/catalog", "200", "application/ld+json") == {
        "$ref": "#/components/schemas/DcatCatalog"
    }
    assert schema("get", "/v1/catalog", "200", "text/turtle") == {"type": "string"}
    assert schema("get", "/.well-known/jwks.json", "200", "application/jwk-set+json") == {
        "$ref": "#/components/schemas/JwkSet"
    }
    assert schema("get", "/health/live", "200") == {"$ref": "#/components/schemas/Liveness"}
    assert schema("get", "/v1/trades/{trade_id}/receipt", "200") == {
        "$ref": "#/components/schemas/Receipt"
    }
    components = document["components"]["schemas"]
    for name in ("Order", "Contract"):
        trade_id = components[name]["properties"]["trade_id"]
        assert "trade_id" in components[name]["required"]
        assert "contract's id" in trade_id["description"], trade_id


def test_every_path_parameter_is_declared(document):
    for method, path, operation in operations(document):
        declared = {
            p["name"]: p
            for p in (ref(document, p) for p in operation.get("parameters", []))
            if p["in"] == "path"
        }
        assert set(declared) == set(re.findall(r"{(\w+)}", path)), (method, path)
        for parameter in declared.values():
            assert parameter["required"] is True, (method, path, parameter)
            assert undescribed(document, parameter["schema"], path) == [], (method, path)


def _routes() -> list[tuple[str, str, Any]]:
    app = create_app(Settings())
    return [
        (method.lower(), route.path_format, handler)
        for route in app.routes
        # the document and its viewers, and the staff console's pages: not the API
        if isinstance(route, HTTPRoute) and not route.path.startswith(("/schema", "/console"))
        for handler in route.route_handlers
        for method in handler.http_methods
        if method != "OPTIONS"
    ]


def test_every_operation_of_the_route_table_is_in_the_document(document):
    assert {(m, p) for m, p, _ in _routes()} == {(m, p) for m, p, _ in operations(document)}


def test_every_request_header_a_handler_reads_is_declared(document):
    seen = 0
    for method, path, handler in _routes():
        operation = document["paths"][path][method]
        declared = {
            p["name"].lower(): p
            for p in (ref(document, p) for p in operation.get("parameters", []))
            if p["in"] == "header"
        }
        assert "x-request-id" in declared, (method, path)  # any request may name itself
        assert "traceparent" in declared, (method, path)  # ... and say which trace it is in
        required = {name.lower() for name in handler.opt.get(REQUIRED_HEADERS, ())}
        for field in handler.parsed_fn_signature.parameters.values():
            kwarg = field.kwarg_definition
            if isinstance(kwarg, ParameterKwarg) and kwarg.param_type == "header":
                seen += 1
                name = (kwarg.name or field.name).lower()
                assert name in declared, (method, path, name)
                assert declared[name]["required"] is (name in required or field.is_required)
        # The token: every operation that needs one says so (its security requirement).
        access = route_access(handler)
        if access == "public":
            assert "security" not in operation, (method, path)
        else:
            scheme = "deliveryToken" if access == "delivery_token" else "apiToken"
            assert operation["security"] == [{scheme: []}], (method, path)
    assert seen >= 5  # Idempotency-Key, X-Chunk-SHA256, Range, If-Range, If-None-Match
    place_order = document["paths"]["/v1/orders"]["post"]["parameters"]
    key = next(p for p in place_order if p.get("name") == "Idempotency-Key")
    assert key["required"] is True and key["schema"]["type"] == "string"
    schemes = document["components"]["securitySchemes"]
    assert schemes["apiToken"]["scheme"] == schemes["deliveryToken"]["scheme"] == "bearer"


def test_every_status_the_api_answers_is_declared(document):
    for method, path, handler in _routes():
        responses = document["paths"][path][method]["responses"]
        expected = {str(handler.status_code), *ALSO_ANSWERS.get((method, path), set())}
        expected |= {str(s) for s in problem_statuses(handler, path)}
        assert expected <= set(responses), (method, path, expected - set(responses))
        for status in map(str, problem_statuses(handler, path)):
            assert "application/problem+json" in responses[status]["content"], (path, status)
        headers = {
            status: set(response.get("headers") or {}) for status, response in responses.items()
        }
        for status, names in headers.items():
            assert {"X-Request-ID", "traceparent"} <= names, (method, path, status)
        if not path.startswith(EXEMPT_PREFIXES):
            # Throttled, or PostgreSQL away: when to come back.
            assert responses["429"]["headers"]["Retry-After"]["required"] is True
            assert responses["503"]["headers"]["Retry-After"]["required"] is False
            assert responses["401"]["headers"]["WWW-Authenticate"]["required"] is True
        for (m, p, status), names in ANSWER_HEADERS.items():
            if (m, p) == (method, path):
                assert names <= headers[status], (method, path, status)


# --- a whole trade, every answer checked against the document ---------------------------------


class Conformance:
    """Checks real answers against the document as schemathesis checks generated ones."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.schema = schemathesis.openapi.from_dict(document)
        self.checked: list[tuple[str, str, int]] = []

    def __call__(self, method: str, path: str, response: Any, status: int) -> Any:
        assert response.status_code == status, response.text
        pattern = re.sub(r"{(\w+)}", r"(?P<\1>[^/]+)", path)
        match = re.fullmatch(pattern, response.request.url.path)
        assert match, (path, response.request.url)
        case = self.schema[path][method.upper()].Case(path_parameters=match.groupdict())
        case.validate_response(response, checks=CHECKS)
        self.checked.append((method, path, status))
        return response.json()


async def test_a_whole_trade_answers_as_the_document_says(
    client, document, trade, admin_token, settings, pool, clock
):
    check = Conformance(document)
    seller, buyer = bearer(trade["seller"]), bearer(trade["buyer"])
    check("get", "/health/live", await client.get("/health/live"), 200)
    jwks = await client.get("/.well-known/jwks.json")
    assert jwks.headers["content-type"].startswith("application/jwk-set+json")
    check("get", "/.well-known/jwks.json", jwks, 200)

    product_id = await list_product(client, trade)
    offer = check(
        "get",
        "/v1/products/{product_id}/plans/{plan_id}/offer",
        await client.get(f"/v1/products/{product_id}/plans/std/offer", headers=seller),
        200,
    )
    signer = trade["signers"]["seller"]
    made = check(
        "post",
        "/v1/products/{product_id}/standing-offers",
        await client.post(
            f"/v1/products/{product_id}/standing-offers",
            json={
                "plan_id": "std",
                "jws": signer.detached(signer.kid, offer["canonical"].encode()),
            },
            headers=seller,
        ),
        201,
    )
    assert made["digest"] == offer["digest"] and made["terms"]["plan"]["id"] == "std"
    catalog = await client.get("/v1/catalog", params={"limit": 1})
    assert catalog.headers["content-type"].startswith("application/ld+json")
    assert len(check("get", "/v1/catalog", catalog, 200)["dcat:dataset"]) == 1

    org = trade["buyer_org"]["id"]
    path = "/v1/accounts/{org_id}/deposits"
    first = check("post", path, await deposit(client, admin_token, org, 5_000_000, "bank-1"), 201)
    again = check("post", path, await deposit(client, admin_token, org, 5_000_000, "bank-1"), 200)
    assert again == first

    key = str(uuid.uuid4())
    order = check(
        "post", "/v1/orders", await place(client, trade, order_body(product_id), key), 201
    )
    assert order["state"] == "awaiting_signatures" and order["trade_id"] is None
    replayed = await place(client, trade, order_body(product_id), key)
    assert replayed.headers["idempotent-replayed"] == "true"
    assert check("post", "/v1/orders", replayed, 201) == order

    contract_id = order["contract_id"]
    contract = check(
        "get",
        "/v1/contracts/{contract_id}",
        await client.get(f"/v1/contracts/{contract_id}", headers=buyer),
        200,
    )
    assert contract["trade_id"] is None
    assert [s["kind"] for s in contract["signatures"]] == ["standing_offer"]
    assert contract["document"]["contract_id"] == contract_id
    signer = trade["signers"]["buyer"]
    signed = check(
        "post",
        "/v1/contracts/{contract_id}/signatures",
        await client.post(
            f"/v1/contracts/{contract_id}/signatures",
            json={"jws": signer.detached(signer.kid, contract["digest"].encode())},
            headers=buyer,
        ),
        200,
    )
    # The trade's id is its contract's id, on the contract and on the order alike.
    assert signed["state"] == "executed" and signed["trade_id"] == contract_id
    order = check(
        "get",
        "/v1/orders/{order_id}",
        await client.get(f"/v1/orders/{order['id']}", headers=buyer),
        200,
    )
    assert order["state"] == "executed" and order["trade_id"] == contract_id

    async with worker(settings, pool, clock) as w:
        assert await w.drain() == 1
    trade_id = order["trade_id"]
    accepted = check(
        "post",
        "/v1/trades/{trade_id}/accept",
        await client.post(f"/v1/trades/{trade_id}/accept", headers=buyer),
        200,
    )
    assert accepted["state"] == "settled"
    receipt = check(
        "get",
        "/v1/trades/{trade_id}/receipt",
        await client.get(f"/v1/trades/{trade_id}/receipt", headers=seller),
        200,
    )
    assert receipt["trade_id"] == trade_id
    assert [e["entry"]["step"] for e in receipt["entries"]] == ["reserved", "settled"]
    assert len(check.checked) == 14
