"""The route table seen by the access tests: every guarded route, the routes whose path names one
organisation's resource, and the access matrix (the status each kind of caller gets, per route).

The unit tests check these tables against the application's declared access; the integration
tests call every route and compare the answers with them.
"""

from __future__ import annotations

from litestar.routes import HTTPRoute

from exchange.app import create_app
from exchange.platform.auth import route_access
from exchange.platform.settings import Settings


def guarded_routes() -> list[tuple[str, str, object]]:
    app = create_app(Settings())
    table: list[tuple[str, str, object]] = []
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            access = route_access(handler)
            assert access is not None, f"{route.path} has no access policy"
            if access in ("public", "delivery_token", "console"):
                continue
            table.extend((method, route.path, access) for method in sorted(handler.http_methods))
    return sorted(table)


GUARDED = guarded_routes()
# Routes whose path names a resource owned by one organisation: (method, path) -> resource kind.
OWNED = {
    ("GET", "/v1/organisations/{org_id:uuid}"): "organisation",
    ("GET", "/v1/tokens/{token_id:uuid}"): "token",
    ("POST", "/v1/tokens/{token_id:uuid}/revoke"): "token",
    ("GET", "/v1/products/{product_id:uuid}"): "product",
    ("PATCH", "/v1/products/{product_id:uuid}"): "product",
    ("POST", "/v1/products/{product_id:uuid}/submit"): "product",
    ("POST", "/v1/products/{product_id:uuid}/revisions"): "product",
    ("POST", "/v1/products/{product_id:uuid}/delist"): "product",
}
# Routes whose other-organisation 404 needs a whole trade to set up: proven in their own module.
OWNED_ELSEWHERE = {
    **dict.fromkeys(
        (
            (
                "POST",
                "/v1/products/{product_id:uuid}/revisions/{revision:int}/files/{name:str}/uploads",
            ),
            ("GET", "/v1/uploads/{upload_id:uuid}"),
            ("PUT", "/v1/uploads/{upload_id:uuid}/chunks/{index:int}"),
            ("POST", "/v1/uploads/{upload_id:uuid}/complete"),
        ),
        "tests/integration/test_delivery_files.py"
        "::test_uploads_are_the_sellers_own_and_only_of_declared_files",
    ),
    (
        "GET",
        "/v1/orders/{order_id:uuid}",
    ): "tests/integration/test_orders.py::test_orders_and_contracts_are_for_the_parties_only",
    (
        "POST",
        "/v1/orders/{order_id:uuid}/cancel",
    ): "tests/integration/test_orders.py::test_orders_and_contracts_are_for_the_parties_only",
    (
        "GET",
        "/v1/contracts/{contract_id:uuid}",
    ): "tests/integration/test_orders.py::test_orders_and_contracts_are_for_the_parties_only",
    (
        "POST",
        "/v1/contracts/{contract_id:uuid}/signatures",
    ): "tests/integration/test_orders.py::test_orders_and_contracts_are_for_the_parties_only",
    (
        "GET",
        "/v1/products/{product_id:uuid}/plans/{plan_id:str}/offer",
    ): "tests/integration/test_orders.py::test_offers_are_the_sellers_own",
    (
        "POST",
        "/v1/products/{product_id:uuid}/standing-offers",
    ): "tests/integration/test_orders.py::test_offers_are_the_sellers_own",
    **{
        (method, f"/v1/trades/{{trade_id:uuid}}{suffix}"): (
            "tests/integration/test_settlement.py::test_trades_are_for_the_parties_only"
        )
        for method, suffix in (
            ("GET", ""),
            ("GET", "/receipt"),
            ("POST", "/accept"),
            ("POST", "/cancel"),
        )
    },
    **{
        (method, f"/v1/grants/{{grant_id:uuid}}{suffix}"): (
            "tests/integration/test_delivery.py::test_grants_and_their_tokens_are_for_the_parties_only"
        )
        for method, suffix in (
            ("GET", ""),
            ("GET", "/usage"),
            ("POST", "/tokens"),
            ("POST", "/tokens/{jti:uuid}/revoke"),
            ("POST", "/top-ups"),
        )
    },
    **dict.fromkeys(
        (
            ("POST", "/v1/grants/{grant_id:uuid}/algorithms"),
            ("GET", "/v1/grants/{grant_id:uuid}/algorithms"),
            ("POST", "/v1/grants/{grant_id:uuid}/algorithms/{sha256:str}/decision"),
            ("POST", "/v1/grants/{grant_id:uuid}/jobs"),
            ("GET", "/v1/grants/{grant_id:uuid}/jobs"),
            ("GET", "/v1/grants/{grant_id:uuid}/budget"),
            ("GET", "/v1/jobs/{job_id:uuid}"),
            ("GET", "/v1/jobs/{job_id:uuid}/receipt"),
            ("POST", "/v1/jobs/{job_id:uuid}/cancel"),
        ),
        "tests/integration/test_compute_jobs.py::"
        "test_algorithms_jobs_and_budgets_are_for_the_grants_parties_only",
    ),
    **dict.fromkeys(
        (
            ("POST", "/v1/trades/{trade_id:uuid}/disputes"),
            ("GET", "/v1/trades/{trade_id:uuid}/disputes"),
            ("GET", "/v1/disputes/{dispute_id:uuid}"),
            ("GET", "/v1/disputes/{dispute_id:uuid}/bundle"),
            ("GET", "/v1/disputes/{dispute_id:uuid}/evidence"),
            ("POST", "/v1/disputes/{dispute_id:uuid}/evidence"),
            ("GET", "/v1/disputes/{dispute_id:uuid}/evidence/{sha256:str}"),
            ("POST", "/v1/disputes/{dispute_id:uuid}/response"),
            ("POST", "/v1/disputes/{dispute_id:uuid}/agreement"),
            ("POST", "/v1/disputes/{dispute_id:uuid}/escalation"),
            ("POST", "/v1/disputes/{dispute_id:uuid}/withdrawal"),
        ),
        "tests/integration/test_disputes.py::test_disputes_are_for_the_parties_only",
    ),
    ("GET", "/v1/products/{product_id:uuid}/usage"): (
        "tests/integration/test_delivery_metered.py::"
        "test_a_metered_plan_bills_by_period_stops_at_the_cap_and_releases_the_rest"
    ),
    ("PUT", "/v1/products/{product_id:uuid}/upstream"): (
        "tests/integration/test_delivery.py::test_grants_and_their_tokens_are_for_the_parties_only"
    ),
    # Objecting to another's product is the point; the seller is refused, a product never
    # listed is 404, and an objection is read by staff and its two parties only.
    **dict.fromkeys(
        (
            ("POST", "/v1/products/{product_id:uuid}/objections"),
            ("GET", "/v1/listing-objections/{objection_id:uuid}"),
        ),
        "tests/integration/test_listing_objections.py::"
        "test_an_objection_is_read_by_staff_and_its_two_parties_only",
    ),
}
STAFF_ONLY = {"reviewer", "admin"}


# --- the access matrix -------------------------------------------------------------------------
#
# Every route (Litestar's automatic OPTIONS answers aside) x every kind of caller: no token, a
# token of each role, another organisation's token, a revoked token. Ids in paths are unknown
# ones, except that "other" addresses the market organisation's own resource where the route
# names one (OWNED): so "other" proves the 404 of a resource that exists. POST and PATCH send {}.

CALLERS = ("anonymous", "seller", "buyer", "seller+buyer", "reviewer", "admin", "other", "revoked")


def matrix_routes() -> list[tuple[str, str, object]]:
    app = create_app(Settings())
    table: list[tuple[str, str, object]] = []
    for route in app.routes:
        # The console's pages take a session, not a token: tests/integration/test_console.py
        # walks them (test_every_console_page_needs_a_session).
        if not isinstance(route, HTTPRoute) or route.path.startswith("/console"):
            continue
        for handler in route.route_handlers:
            if handler.http_methods == {"OPTIONS"}:
                continue
            table.extend(
                (method, route.path, route_access(handler)) for method in handler.http_methods
            )
    return sorted(table)


# The status each caller gets, in the order of CALLERS:
#   anonymous  seller  buyer  seller+buyer  reviewer  admin  other  revoked
# "admin" is the operator's bootstrap token (roles admin and reviewer); "reviewer" is a staff
# token with that role alone. Public routes ignore a token, even a revoked one. A new route must
# be added here (test_every_route_has_a_row_in_the_matrix), with the statuses it should give.
MATRIX = {
    ("POST", "/v1/trades/{trade_id:uuid}/disputes"): "401 422 422 422 403 403 422 401",
    ("GET", "/v1/trades/{trade_id:uuid}/disputes"): "401 404 404 404 404 404 404 401",
    ("GET", "/v1/disputes"): "401 200 200 200 200 200 200 401",
    ("GET", "/v1/disputes/{dispute_id:uuid}"): "401 404 404 404 404 404 404 401",
    ("GET", "/v1/disputes/{dispute_id:uuid}/bundle"): "401 404 404 404 404 404 404 401",
    ("GET", "/v1/disputes/{dispute_id:uuid}/evidence"): "401 404 404 404 404 404 404 401",
    ("POST", "/v1/disputes/{dispute_id:uuid}/evidence"): "401 400 400 400 400 400 400 401",
    (
        "GET",
        "/v1/disputes/{dispute_id:uuid}/evidence/{sha256:str}",
    ): "401 404 404 404 404 404 404 401",
    ("POST", "/v1/disputes/{dispute_id:uuid}/response"): "401 422 422 422 403 403 422 401",
    ("POST", "/v1/disputes/{dispute_id:uuid}/resolution"): "401 403 403 403 422 422 403 401",
    ("POST", "/v1/disputes/{dispute_id:uuid}/agreement"): "401 422 422 422 403 403 422 401",
    ("POST", "/v1/disputes/{dispute_id:uuid}/escalation"): "401 422 422 422 403 403 422 401",
    ("POST", "/v1/disputes/{dispute_id:uuid}/award"): "401 403 403 403 403 422 403 401",
    ("POST", "/v1/disputes/{dispute_id:uuid}/withdrawal"): "401 404 404 404 403 403 404 401",
    ("GET", "/v1/products/{product_id:uuid}/usage"): "401 404 403 404 404 404 404 401",
    ("POST", "/v1/organisations/{org_id:uuid}/reinstate"): "401 403 403 403 403 404 403 401",
    ("POST", "/v1/organisations/{org_id:uuid}/suspend"): "401 403 403 403 403 422 403 401",
    ("GET", "/v1/grants"): "401 200 200 200 200 200 200 401",
    ("GET", "/v1/grants/{grant_id:uuid}/files"): "401 401 401 401 401 401 401 401",
    ("GET", "/v1/grants/{grant_id:uuid}/files/{name:str}"): "401 401 401 401 401 401 401 401",
    (
        "POST",
        "/v1/products/{product_id:uuid}/revisions/{revision:int}/files/{name:str}/uploads",
    ): "401 404 403 404 403 403 404 401",
    ("GET", "/v1/uploads/{upload_id:uuid}"): "401 404 403 404 403 403 404 401",
    ("PUT", "/v1/uploads/{upload_id:uuid}/chunks/{index:int}"): "401 404 403 404 403 403 404 401",
    ("POST", "/v1/uploads/{upload_id:uuid}/complete"): "401 404 403 404 403 403 404 401",
    ("GET", "/v1/grants/{grant_id:uuid}"): "401 404 404 404 404 404 404 401",
    ("GET", "/v1/grants/{grant_id:uuid}/usage"): "401 404 404 404 404 404 404 401",
    ("POST", "/v1/grants/{grant_id:uuid}/resume"): "401 403 403 403 403 404 403 401",
    ("POST", "/v1/grants/{grant_id:uuid}/revoke"): "401 403 403 403 403 422 403 401",
    ("POST", "/v1/grants/{grant_id:uuid}/suspend"): "401 403 403 403 403 422 403 401",
    ("POST", "/v1/grants/{grant_id:uuid}/tokens"): "401 403 404 404 403 403 404 401",
    (
        "POST",
        "/v1/grants/{grant_id:uuid}/tokens/{jti:uuid}/revoke",
    ): "401 403 404 404 403 404 404 401",
    ("POST", "/v1/grants/{grant_id:uuid}/top-ups"): "401 403 422 422 403 403 422 401",
    ("PUT", "/v1/products/{product_id:uuid}/upstream"): "401 422 403 422 403 403 422 401",
    ("POST", "/v1/grants/{grant_id:uuid}/algorithms"): "401 403 422 422 403 403 422 401",
    ("GET", "/v1/grants/{grant_id:uuid}/algorithms"): "401 404 404 404 404 404 404 401",
    (
        "POST",
        "/v1/grants/{grant_id:uuid}/algorithms/{sha256:str}/decision",
    ): "401 422 403 422 403 403 422 401",
    ("POST", "/v1/grants/{grant_id:uuid}/jobs"): "401 403 422 422 403 403 422 401",
    ("GET", "/v1/grants/{grant_id:uuid}/jobs"): "401 404 404 404 404 404 404 401",
    ("GET", "/v1/grants/{grant_id:uuid}/budget"): "401 404 404 404 404 404 404 401",
    ("GET", "/v1/jobs/{job_id:uuid}"): "401 404 404 404 404 404 404 401",
    ("GET", "/v1/jobs/{job_id:uuid}/receipt"): "401 404 404 404 404 404 404 401",
    ("POST", "/v1/jobs/{job_id:uuid}/cancel"): "401 403 404 404 403 403 404 401",
    ("DELETE", "/v1/peers/{code:str}"): "401 403 403 403 403 404 403 401",
    ("GET", "/.well-known/dataex-exchange"): "200 200 200 200 200 200 200 200",
    ("GET", "/v1/peers"): "401 403 403 403 200 200 403 401",
    ("GET", "/v1/recognition/feed"): "200 200 200 200 200 200 200 200",
    ("GET", "/v1/recognitions"): "200 200 200 200 200 200 200 200",
    ("GET", "/v1/recognitions/{origin:str}/{product_code:str}"): "404 404 404 404 404 404 404 404",
    ("POST", "/v1/member-credentials"): "401 403 403 403 403 422 403 401",
    ("POST", "/v1/member-credentials/accept"): "401 403 403 403 403 422 403 401",
    ("POST", "/v1/peers"): "401 403 403 403 403 422 403 401",
    ("POST", "/v1/recognitions"): "401 422 422 422 422 422 422 401",
    ("GET", "/.well-known/jwks.json"): "200 200 200 200 200 200 200 200",
    ("GET", "/health/live"): "200 200 200 200 200 200 200 200",
    ("GET", "/health/ready"): "200 200 200 200 200 200 200 200",
    ("GET", "/schema"): "200 200 200 200 200 200 200 200",
    ("GET", "/schema/oauth2-redirect.html"): "200 200 200 200 200 200 200 200",
    ("GET", "/schema/openapi.json"): "200 200 200 200 200 200 200 200",
    ("GET", "/schema/scalar"): "200 200 200 200 200 200 200 200",
    ("GET", "/schema/swagger"): "200 200 200 200 200 200 200 200",
    ("GET", "/schema/{path:str}"): "404 404 404 404 404 404 404 404",
    ("GET", "/v1/accounts/me"): "401 200 200 200 200 200 200 401",
    ("GET", "/v1/accounts/{org_id:uuid}"): "401 403 403 403 403 404 403 401",
    ("GET", "/v1/audit"): "401 403 403 403 403 200 403 401",
    ("GET", "/v1/catalog"): "200 200 200 200 200 200 200 200",
    ("GET", "/v1/certificates/{product_code:str}/status"): "404 404 404 404 404 404 404 404",
    ("GET", "/v1/contracts/{contract_id:uuid}"): "401 404 404 404 404 404 404 401",
    ("GET", "/v1/exchange/accounts"): "401 403 403 403 200 200 403 401",
    ("GET", "/metrics"): "401 403 403 403 200 200 403 401",
    ("GET", "/v1/fee-schedules"): "200 200 200 200 200 200 200 200",
    ("GET", "/v1/keys"): "401 200 200 200 403 403 200 401",
    ("GET", "/v1/ledger/consistency"): "400 400 400 400 400 400 400 400",
    ("GET", "/v1/ledger/entries"): "401 403 403 403 200 200 403 401",
    ("GET", "/v1/ledger/tree-heads"): "200 200 200 200 200 200 200 200",
    ("GET", "/v1/ledger/tree-heads/latest"): "404 404 404 404 404 404 404 404",
    ("GET", "/v1/me"): "401 200 200 200 200 200 200 401",
    ("GET", "/v1/orders"): "401 200 200 200 403 403 200 401",
    ("GET", "/v1/orders/{order_id:uuid}"): "401 404 404 404 404 404 404 401",
    ("GET", "/v1/organisations"): "401 403 403 403 403 200 403 401",
    ("GET", "/v1/organisations/{org_id:uuid}"): "401 404 404 404 404 404 404 401",
    ("GET", "/v1/organisations/{org_id:uuid}/tokens"): "401 403 403 403 403 200 403 401",
    ("GET", "/v1/policy/lists"): "200 200 200 200 200 200 200 200",
    ("GET", "/v1/policy/lists/{version:str}"): "404 404 404 404 404 404 404 404",
    ("GET", "/v1/products"): "200 200 200 200 200 200 200 200",
    ("GET", "/v1/products/{product_id:uuid}"): "401 404 404 404 404 404 404 401",
    ("GET", "/v1/products/{product_id:uuid}/certificate"): "404 404 404 404 404 404 404 404",
    (
        "GET",
        "/v1/products/{product_id:uuid}/plans/{plan_id:str}/offer",
    ): "401 404 403 404 403 403 404 401",
    ("GET", "/v1/reviews"): "401 403 403 403 200 200 403 401",
    ("GET", "/v1/reviews/{case_id:uuid}"): "401 403 403 403 404 404 403 401",
    ("GET", "/v1/settlement/failures"): "401 403 403 403 200 200 403 401",
    ("GET", "/v1/tokens"): "401 200 200 200 200 200 200 401",
    ("GET", "/v1/tokens/{token_id:uuid}"): "401 404 404 404 404 404 404 401",
    ("GET", "/v1/trades"): "401 200 200 200 403 403 200 401",
    ("GET", "/v1/trades/{trade_id:uuid}"): "401 404 404 404 404 404 404 401",
    ("GET", "/v1/trades/{trade_id:uuid}/receipt"): "401 404 404 404 404 404 404 401",
    ("PATCH", "/v1/organisations/{org_id:uuid}"): "401 403 403 403 403 404 403 401",
    ("PATCH", "/v1/products/{product_id:uuid}"): "401 404 403 404 403 403 404 401",
    ("POST", "/v1/accounts/{org_id:uuid}/deposits"): "401 403 403 403 403 422 403 401",
    ("POST", "/v1/accounts/{org_id:uuid}/withdrawals"): "401 403 403 403 403 422 403 401",
    ("POST", "/v1/contracts/{contract_id:uuid}/signatures"): "401 422 422 422 403 403 422 401",
    ("POST", "/v1/fee-schedules"): "401 403 403 403 403 422 403 401",
    ("POST", "/v1/keys"): "401 422 422 422 403 403 422 401",
    ("POST", "/v1/keys/custodial"): "401 201 201 201 403 403 201 401",
    ("POST", "/v1/orders"): "401 403 422 422 403 403 422 401",
    ("POST", "/v1/orders/{order_id:uuid}/cancel"): "401 403 422 422 403 403 422 401",
    ("POST", "/v1/organisations"): "401 403 403 403 403 422 403 401",
    ("POST", "/v1/organisations/{org_id:uuid}/tokens"): "401 403 403 403 403 422 403 401",
    ("POST", "/v1/policy/evaluate"): "401 422 422 422 422 422 422 401",
    ("POST", "/v1/policy/lists"): "401 403 403 403 403 422 403 401",
    ("POST", "/v1/policy/replay"): "401 403 403 403 403 422 403 401",
    ("POST", "/v1/products"): "401 201 403 201 403 403 201 401",
    ("POST", "/v1/products/{product_id:uuid}/delist"): "401 404 403 404 404 404 404 401",
    ("POST", "/v1/products/{product_id:uuid}/reinstate"): "401 403 403 403 422 422 403 401",
    ("POST", "/v1/products/{product_id:uuid}/revisions"): "401 404 403 404 403 403 404 401",
    ("POST", "/v1/products/{product_id:uuid}/standing-offers"): "401 422 403 422 403 403 422 401",
    ("POST", "/v1/products/{product_id:uuid}/submit"): "401 404 403 404 403 403 404 401",
    ("POST", "/v1/products/{product_id:uuid}/suspend"): "401 403 403 403 422 422 403 401",
    (
        "POST",
        "/v1/products/{product_id:uuid}/legal-prohibition",
    ): "401 403 403 403 422 422 403 401",
    (
        "POST",
        "/v1/organisations/{org_id:uuid}/exporter-status",
    ): "401 403 403 403 422 422 403 401",
    ("POST", "/v1/reviews/{case_id:uuid}/claim"): "401 403 403 403 404 404 403 401",
    ("POST", "/v1/reviews/{case_id:uuid}/release"): "401 403 403 403 404 404 403 401",
    ("POST", "/v1/reviews/{case_id:uuid}/decisions"): "401 403 403 403 422 422 403 401",
    ("POST", "/v1/tokens"): "401 422 422 422 422 422 422 401",
    ("POST", "/v1/products/{product_id:uuid}/objections"): "401 422 422 422 403 403 422 401",
    ("GET", "/v1/listing-objections"): "401 403 403 403 200 200 403 401",
    ("GET", "/v1/listing-objections/{objection_id:uuid}"): "401 404 404 404 404 404 404 401",
    (
        "POST",
        "/v1/listing-objections/{objection_id:uuid}/suspension",
    ): "401 403 403 403 422 422 403 401",
    (
        "POST",
        "/v1/listing-objections/{objection_id:uuid}/decision",
    ): "401 403 403 403 422 422 403 401",
    ("POST", "/v1/tokens/{token_id:uuid}/revoke"): "401 404 404 404 404 404 404 401",
    ("POST", "/v1/trades/{trade_id:uuid}/accept"): "401 403 404 404 403 403 404 401",
    ("POST", "/v1/trades/{trade_id:uuid}/cancel"): "401 422 422 422 403 403 422 401",
}
