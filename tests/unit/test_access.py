"""Access control from the route table, without HTTP: a route without a policy stops the app,
every route with an owned resource's id says whose it is, and the access matrix has a row per
route agreeing with the route's declared access. tests/integration/test_access.py calls them."""

import pytest
from litestar import Litestar, get

from exchange.app import RouteWithoutAccessPolicy, check_access_policies
from exchange.platform.auth import PUBLIC
from tests.kit.access import (
    CALLERS,
    GUARDED,
    MATRIX,
    OWNED,
    OWNED_ELSEWHERE,
    STAFF_ONLY,
    matrix_routes,
)


def test_every_route_declares_an_access_policy_or_the_app_refuses_to_start():
    @get("/v1/forgotten")
    async def forgotten() -> None:
        return None

    with pytest.raises(RouteWithoutAccessPolicy, match="/v1/forgotten"):
        check_access_policies(Litestar(route_handlers=[forgotten], openapi_config=None))

    @get("/v1/fine", opt=PUBLIC)
    async def fine() -> None:
        return None

    check_access_policies(Litestar(route_handlers=[fine], openapi_config=None))


def test_the_route_table_is_not_empty_and_covers_admin_routes():
    assert len(GUARDED) >= 10
    assert any(access == ("admin",) for _, _, access in GUARDED)


def test_every_route_with_a_path_id_says_whose_resource_it_is():
    for method, path, access in GUARDED:
        if "{" in path and not (isinstance(access, tuple) and set(access) <= STAFF_ONLY):
            assert (method, path) in OWNED or (method, path) in OWNED_ELSEWHERE, (
                f"{method} {path} takes an id: add it to OWNED with a 404 test for other organisations"
            )


def test_every_route_has_a_row_in_the_matrix():
    routes = {(method, path) for method, path, _ in matrix_routes()}
    missing = sorted(routes - MATRIX.keys())
    stale = sorted(MATRIX.keys() - routes)
    assert not missing, f"add a row to MATRIX for each new route: {missing}"
    assert not stale, f"remove the rows of routes that no longer exist: {stale}"


def test_the_matrix_agrees_with_each_routes_declared_access():
    """401 exactly where a token is needed; 403 exactly for a token lacking every needed role."""
    roles = {
        "seller": {"seller"},
        "buyer": {"buyer"},
        "seller+buyer": {"seller", "buyer"},
        "reviewer": {"reviewer"},
        "admin": {"admin", "reviewer"},
        "other": {"seller", "buyer"},
    }
    for method, path, access in matrix_routes():
        expected = dict(zip(CALLERS, map(int, MATRIX[(method, path)].split()), strict=True))
        public = access == "public"
        for caller in ("anonymous", "revoked"):
            assert (expected[caller] == 401) == (not public), (method, path, caller)
        if access == "delivery_token":  # an API token is no delivery token, whatever its roles
            assert set(expected.values()) == {401}, (method, path)
            continue
        for caller, held in roles.items():
            lacking = isinstance(access, tuple) and not held & set(access)
            assert (expected[caller] == 403) == lacking, (method, path, caller, access)
