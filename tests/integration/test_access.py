"""Access control generated from the route table, over HTTP: a new route without a policy fails.

For every non-public route: no token, a malformed header, an unknown, a revoked and an expired
token are 401; a token without the needed role is 403. Routes that take the id of an
organisation's private resource must answer 404 to any other organisation. The access matrix
(tests/kit/access.py) states, for every route, the status each kind of caller gets; the last
test calls every route as every caller and compares. That each route has a row, and that the
rows agree with the declared access, is checked without HTTP in tests/unit/test_access.py.
"""

import re
import uuid
from datetime import timedelta

import pytest

from tests.kit.access import (
    CALLERS,
    GUARDED,
    MATRIX,
    OWNED,
    matrix_routes,
)
from tests.kit.api import bearer, issue_token, make_uscc, register_org
from tests.kit.documents import metadata

_PARAM = re.compile(r"\{[^}]+\}")


# A body each route accepts, so that only ownership decides the answer.
BODIES = {
    "/v1/products/{product_id:uuid}/revisions": metadata(),
    "/v1/products/{product_id:uuid}/delist": {"reason": "test"},
}


def concrete(path: str) -> str:
    """The path with unknown ids in it (1 for a number: a revision, a chunk)."""
    return _PARAM.sub(lambda m: "1" if m.group().endswith(":int}") else str(uuid.uuid4()), path)


@pytest.fixture
async def tokens(client, admin_token, clock):
    market = await register_org(client, admin_token, make_uscc(1))
    other = await register_org(client, admin_token, make_uscc(2))
    me = (await client.get("/v1/me", headers=bearer(admin_token))).json()
    operator_id = me["organisation"]["id"]
    result = {
        "seller+buyer": await issue_token(client, admin_token, market["id"], ["seller", "buyer"]),
        "seller": await issue_token(client, admin_token, market["id"], ["seller"]),
        "buyer": await issue_token(client, admin_token, market["id"], ["buyer"]),
        "reviewer": await issue_token(client, admin_token, operator_id, ["reviewer"]),
        "other": await issue_token(client, admin_token, other["id"], ["seller", "buyer"]),
        "admin": admin_token,
        "market_id": market["id"],
        "other_id": other["id"],
    }
    revoked = await issue_token(
        client,
        admin_token,
        market["id"],
        [
            "seller",
            "buyer",
        ],
    )
    token_id = (await client.get("/v1/me", headers=bearer(revoked))).json()["token_id"]
    response = await client.post(f"/v1/tokens/{token_id}/revoke", headers=bearer(admin_token))
    assert response.status_code == 200
    result["revoked"] = revoked
    result["short"] = await issue_token(
        client, admin_token, market["id"], ["seller", "buyer"], days=1
    )
    return result


async def call(client, method, path, token=None, raw_header=None, body=None):
    headers = bearer(token) if token else {}
    if raw_header is not None:
        headers = {"Authorization": raw_header}
    if body is None and method in ("POST", "PATCH"):
        body = {}
    return await client.request(method, path, headers=headers, json=body)


@pytest.mark.parametrize(
    ("method", "path", "access"), GUARDED, ids=[f"{m} {p}" for m, p, _ in GUARDED]
)
async def test_401_without_a_valid_token(client, tokens, clock, method, path, access):
    target = concrete(path)
    for header in (None, "Basic abc", "Bearer ", "Bearer dxt_00_unknown"):
        response = await call(client, method, target, raw_header=header)
        assert response.status_code == 401, (header, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.json()["code"] == "unauthenticated"
        assert response.headers["www-authenticate"].startswith("Bearer")
    response = await call(client, method, target, token=tokens["revoked"])
    assert response.status_code == 401 and "revoked" in response.json()["detail"]
    clock.advance(timedelta(days=2))
    response = await call(client, method, target, token=tokens["short"])
    assert response.status_code == 401 and "expired" in response.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path", "access"),
    [r for r in GUARDED if isinstance(r[2], tuple)],
    ids=[f"{m} {p}" for m, p, a in GUARDED if isinstance(a, tuple)],
)
async def test_403_with_a_token_lacking_the_role(client, tokens, method, path, access):
    candidates = {
        "seller+buyer": {"seller", "buyer"},
        "seller": {"seller"},
        "buyer": {"buyer"},
        "reviewer": {"reviewer"},
    }
    lacking = [name for name, roles in candidates.items() if not roles & set(access)]
    assert lacking, f"no test token lacks {access}"
    for name in lacking:
        response = await call(client, method, concrete(path), token=tokens[name])
        assert response.status_code == 403, (name, response.text)
        assert response.json()["code"] == "forbidden"
        assert response.json()["required_roles"] == list(access)


async def _resource_of(client, tokens, kind, owner_token, owner_org):
    if kind == "organisation":
        return owner_org
    if kind == "product":
        response = await client.post(
            "/v1/products", json={"name_zh": "样例"}, headers=bearer(owner_token)
        )
        assert response.status_code == 201, response.text
        return response.json()["id"]
    response = await client.post(
        "/v1/tokens", json={"name": "x", "roles": ["buyer"]}, headers=bearer(owner_token)
    )
    assert response.status_code == 201, response.text
    return response.json()["details"]["id"]


@pytest.mark.parametrize(
    ("method", "path"), sorted(OWNED), ids=[f"{m} {p}" for m, p in sorted(OWNED)]
)
async def test_another_organisations_resource_is_404(client, tokens, method, path):
    kind = OWNED[(method, path)]
    theirs = await _resource_of(client, tokens, kind, tokens["other"], tokens["other_id"])
    mine = await _resource_of(client, tokens, kind, tokens["seller+buyer"], tokens["market_id"])
    body = BODIES.get(path)
    target = _PARAM.sub(theirs, path)
    response = await call(client, method, target, token=tokens["seller+buyer"], body=body)
    assert response.status_code == 404, response.text
    assert response.json()["code"] == "not_found"
    # The same route for one's own resource gets past ownership (it may still refuse the action
    # for the product's state), so the 404 above is about ownership.
    response = await call(
        client, method, _PARAM.sub(mine, path), token=tokens["seller+buyer"], body=body
    )
    assert response.status_code != 404 and response.status_code < 500, response.text
    # An unknown id gives the very same answer as another organisation's.
    response = await call(client, method, concrete(path), token=tokens["seller+buyer"], body=body)
    assert response.status_code == 404


async def observe(client, tokens, method, path):
    """The status each caller gets on ``method path``."""
    statuses = {}
    for caller in CALLERS:
        target = concrete(path)
        if caller == "other" and (method, path) in OWNED:
            kind = OWNED[(method, path)]
            mine = await _resource_of(
                client, tokens, kind, tokens["seller+buyer"], tokens["market_id"]
            )
            target = _PARAM.sub(mine, path)
        token = None if caller == "anonymous" else tokens[caller]
        response = await call(client, method, target, token=token, body=BODIES.get(path))
        statuses[caller] = response.status_code
    return statuses


@pytest.fixture
async def signing_key(pool, settings):
    """What `dataex up` makes on a first start; the exchange's identity and feed need it."""
    from exchange.platform.clock import SystemClock
    from exchange.platform.signing import KeyRing, load_master_key

    async with pool.acquire() as conn, conn.transaction():
        await KeyRing(load_master_key(settings.state_dir)).ensure_key(conn, SystemClock().now())


async def test_access_matrix(client, tokens, signing_key):
    mismatches: list[str] = []
    for method, path, _ in matrix_routes():
        expected = dict(zip(CALLERS, map(int, MATRIX[(method, path)].split()), strict=True))
        observed = await observe(client, tokens, method, path)
        mismatches.extend(
            f"{method} {path} as {caller}: expected {expected[caller]}, got {observed[caller]}"
            for caller in CALLERS
            if observed[caller] != expected[caller]
        )
    assert not mismatches, "\n".join(mismatches)
