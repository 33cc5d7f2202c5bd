"""Schemathesis against the app's own OpenAPI document: no 5xx, every answer as documented.

Each operation gets a bounded number of generated requests (valid and invalid ones, a fixed
seed), sent with a token of every role that may call it (no token for public operations), to the
app in process over ASGI with its real PostgreSQL and NATS. Rate limits are off for the run: the
generator sends far more requests per second than one client would. Checks: no server error, and
the status code, content type, headers and body each conform to the document.

Every operation of the route table is run, and the route table and the document list the same
operations. The only routes left out are not operations of the API: the document's own routes
under /schema (the JSON, YAML and its viewers; not in the document) and Litestar's automatic
OPTIONS answers.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from litestar.routes import HTTPRoute
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from contracts.policy.service import PolicyService
from exchange.app import create_app
from exchange.identity.service import IdentityService
from exchange.platform.audit import Actor
from exchange.platform.auth import route_access
from exchange.platform.clock import OffsetClock
from exchange.platform.db import create_pool
from exchange.platform.settings import Settings
from exchange.platform.signing import KeyRing, load_master_key
from tests.kit import servers as harness
from tests.kit.api import bearer, make_uscc, org_body

# Examples per (operation, token): 15 keep the run near 30 s here (25: 46 s, no new finding).
EXAMPLES = int(os.environ.get("DATAEX_SCHEMATHESIS_EXAMPLES", "15"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# A token per role; "seller+buyer" is a market organisation's token with both roles.
ROLE_TOKENS = {
    "seller": "seller+buyer",
    "buyer": "seller+buyer",
    "reviewer": "reviewer",
    "admin": "admin",
}


def _operations() -> list[tuple[str, str, tuple[str, ...]]]:
    """(METHOD, OpenAPI path, callers) for every documented operation, from the route table."""
    app = create_app(Settings())
    table: list[tuple[str, str, tuple[str, ...]]] = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute) or route.path.startswith(("/schema", "/console")):
            continue  # the document, its viewers and the staff console: not the API
        for handler in route.route_handlers:
            if handler.http_methods == {"OPTIONS"}:
                continue  # Litestar's automatic OPTIONS (an Allow header), not documented
            assert handler.include_in_schema, f"{route.path} is left out of the document"
            access = route_access(handler)
            if access in ("public", "delivery_token"):  # no API token (nor a delivery token)
                callers: tuple[str, ...] = ("anonymous",)
            elif access == "authenticated":
                callers = ("seller+buyer", "reviewer", "admin")
            else:
                assert isinstance(access, tuple)
                callers = tuple(sorted({ROLE_TOKENS[role] for role in access}))
            table.extend((method, route.path_format, callers) for method in handler.http_methods)
    return sorted(table)


OPERATIONS = _operations()
# What the run saw: (METHOD, path) -> the statuses it was answered with.
SEEN: dict[tuple[str, str], collections.Counter[int]] = collections.defaultdict(collections.Counter)


async def _bootstrap(settings: Settings) -> str:
    await harness.clean(settings)
    assert settings.database_url
    pool = await create_pool(settings.database_url, max_size=2)
    try:
        issued, _ = await IdentityService(pool, OffsetClock()).bootstrap(
            Actor.cli("schemathesis"), "测试交易所"
        )
        await PolicyService(pool, OffsetClock()).ensure_initial_list(Actor.cli("schemathesis"))
        # What `dataex up` does on a first start: a signing key (certificates, identity, feed).
        async with pool.acquire() as conn, conn.transaction():
            await KeyRing(load_master_key(settings.state_dir)).ensure_key(conn, OffsetClock().now())
    finally:
        await pool.close()
    return issued.token


@dataclasses.dataclass
class Api:
    schema: Any
    client: asgi.ASGIClient
    tokens: dict[str, str]


@pytest.fixture(scope="module")
def api(servers: harness.TestServers) -> Iterator[Api]:
    settings = dataclasses.replace(
        servers.settings, rate_limit_per_second=0, rate_limit_anonymous_per_second=0
    )
    admin = asyncio.run(_bootstrap(settings))
    app = create_app(settings, clock=OffsetClock())
    schema = schemathesis.openapi.from_asgi("/schema/openapi.json", app)
    # Entered: schemathesis' pytest plugin ends ASGI lifespans after every test, and an entered
    # client starts the app's lifespan again on its next request.
    # Litestar types its ASGI scopes and events as TypedDicts, schemathesis as dict[str, Any]:
    # the same protocol, typed in two ways neither of which accepts the other.
    client = asgi.get_client(app).__enter__()  # type: ignore[arg-type]
    try:
        me = client.get("/v1/me", headers=bearer(admin)).json()
        market = client.post(
            "/v1/organisations", json=org_body(make_uscc(1)), headers=bearer(admin)
        ).json()

        def token(org_id: str, roles: list[str]) -> str:
            response = client.post(
                f"/v1/organisations/{org_id}/tokens",
                json={"name": "schemathesis", "roles": roles},
                headers=bearer(admin),
            )
            assert response.status_code == 201, response.text
            return str(response.json()["token"])

        tokens = {
            "admin": admin,
            "reviewer": token(me["organisation"]["id"], ["reviewer"]),
            "seller+buyer": token(market["id"], ["seller", "buyer"]),
        }
        yield Api(schema=schema, client=client, tokens=tokens)
    finally:
        asgi.shutdown_lifespans()


@pytest.mark.parametrize(
    ("method", "path", "callers"), OPERATIONS, ids=[f"{m} {p}" for m, p, _ in OPERATIONS]
)
def test_operation_conforms_to_the_document(api: Api, method: str, path: str, callers):
    operation = api.schema[path][method]
    modes = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
    strategy = st.one_of(*(operation.as_strategy(generation_mode=mode) for mode in modes))

    for caller in callers:
        headers = {} if caller == "anonymous" else bearer(api.tokens[caller])
        exercise(api, strategy, headers, SEEN[(method, path)])


def test_the_run_covers_every_documented_operation(api: Api, request: pytest.FixtureRequest):
    """The route table and the served document list the same operations, and (when the whole
    module ran) each was called and answered as documented."""
    documented = {
        (method.upper(), path)
        for path, item in api.schema.raw_schema["paths"].items()
        for method in item
        if method in ("get", "put", "post", "patch", "delete")
    }
    assert {(method, path) for method, path, _ in OPERATIONS} == documented
    ran = {item.name for item in request.session.items}
    if not all(
        f"test_operation_conforms_to_the_document[{m} {p}]" in ran for m, p, _ in OPERATIONS
    ):
        pytest.skip("only some operations were selected")
    assert set(SEEN) == documented
    declared = sum(
        len(operation["responses"])
        for item in api.schema.raw_schema["paths"].values()
        for method, operation in item.items()
        if method in ("get", "put", "post", "patch", "delete")
    )
    observed = sum(len(statuses) for statuses in SEEN.values())
    print(
        f"\nschemathesis: {len(documented)} operations, {declared} responses declared;"
        f" {sum(sum(c.values()) for c in SEEN.values())} calls answered with {observed}"
        f" distinct (operation, status) pairs, each checked against the document"
    )


def exercise(
    api: Api, strategy: Any, headers: dict[str, str], seen: collections.Counter[int]
) -> None:
    @seed(0x5EED)
    @hypothesis_settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: schemathesis.Case[Any]) -> None:
        response = case.call_and_validate(session=api.client, headers=headers, checks=CHECKS)
        seen[response.status_code] += 1

    run()
