"""The composition root of the HTTP API: one factory assembles every part's routes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from litestar import Litestar, Router
from litestar.middleware import DefineMiddleware
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.routes import HTTPRoute

from contracts.orders.api import (
    ContractController,
    FeeScheduleController,
    KeyController,
    OfferController,
    OrderController,
)
from contracts.policy.api import PolicyController
from exchange.catalog.api import CatalogController, ProductCatalogController
from exchange.compute.api import GrantComputeController, JobController
from exchange.console.router import console_routers
from exchange.console.web import template_config
from exchange.delivery.api import GrantController, ProductUsageController, UpstreamController
from exchange.delivery.files_api import (
    GrantFileController,
    RevisionFileController,
    UploadController,
)
from exchange.disputes.api import DisputeController, TradeDisputeController
from exchange.health import HealthController, MetricsController
from exchange.identity.api import OrganisationController, TokenController
from exchange.listings.api import (
    CertificateController,
    ListingObjectionController,
    WellKnownController,
)
from exchange.platform.audit.api import AuditController
from exchange.platform.auth import PUBLIC, access_guard, route_access
from exchange.platform.bus import connect_nats
from exchange.platform.clock import Clock, SystemClock
from exchange.platform.context import Platform
from exchange.platform.db import create_pool
from exchange.platform.deps import DEPENDENCIES
from exchange.platform.heartbeat import forget, run_heartbeat
from exchange.platform.http import (
    EXCEPTION_HANDLERS,
    ApiRequest,
    DocumentedOpenAPIConfig,
    RequestContextMiddleware,
    add_request_id_header,
    add_traceparent_header,
    declare_problem_responses,
)
from exchange.platform.limits import (
    MAX_JSON_DEPTH,
    MAX_JSON_INTEGER,
    MAX_PARAMETER_CHARS,
    InputGuardMiddleware,
    RateLimitMiddleware,
    RateLimits,
)
from exchange.platform.logging import configure_logging, get_logger
from exchange.platform.settings import Settings
from exchange.platform.signing import KeyRing, load_master_key
from exchange.recognition.api import (
    ExchangeIdentityController,
    FeedController,
    MemberCredentialController,
    PeerController,
    RecognitionController,
)
from exchange.review.api import ExporterStatusController, ReviewController
from exchange.wiring import DEPENDENCIES as ROOM_SERVICES
from exchange.wiring import provide_reports
from settlement.api import (
    AccountController,
    ExchangeAccountController,
    LedgerController,
    SettlementFailureController,
    TradeController,
)

log = get_logger(__name__)
OPENAPI_PATH = "/schema"

ROUTE_HANDLERS: list[Any] = [
    HealthController,
    MetricsController,
    OrganisationController,
    TokenController,
    AuditController,
    PolicyController,
    ProductCatalogController,
    CertificateController,
    ListingObjectionController,
    CatalogController,
    ReviewController,
    ExporterStatusController,
    WellKnownController,
    OrderController,
    ContractController,
    KeyController,
    OfferController,
    FeeScheduleController,
    TradeController,
    AccountController,
    ExchangeAccountController,
    LedgerController,
    SettlementFailureController,
    ExchangeIdentityController,
    PeerController,
    MemberCredentialController,
    RecognitionController,
    FeedController,
    GrantController,
    GrantFileController,
    RevisionFileController,
    UploadController,
    ProductUsageController,
    UpstreamController,
    GrantComputeController,
    JobController,
    TradeDisputeController,
    DisputeController,
]


class RouteWithoutAccessPolicy(RuntimeError):
    """A route declares neither PUBLIC nor requires(...): refuse to start rather than guess."""


def check_access_policies(app: Litestar) -> None:
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if route_access(handler) is None:
                raise RouteWithoutAccessPolicy(
                    f"route {sorted(handler.http_methods)} {route.path} ({handler.handler_name})"
                    " declares no access policy: add opt=PUBLIC or opt=requires(...)"
                )


def create_app(settings: Settings | None = None, *, clock: Clock | None = None) -> Litestar:
    """Build the API. Connections open in the lifespan, so building is cheap and pure."""
    settings = settings or Settings.from_env()
    clock = clock or SystemClock()

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if not settings.database_url or not settings.nats_url:
            raise RuntimeError(
                "the API needs DATAEX_DATABASE_URL and DATAEX_NATS_URL"
                " (`dataex up` sets both when it starts embedded servers)"
            )
        pool = await create_pool(settings.database_url)
        try:
            nats = await connect_nats(settings.nats_url, name="dataex-api")
        except Exception:
            await pool.close()
            raise
        app.state.platform = Platform(
            settings=settings,
            clock=clock,
            pool=pool,
            nats=nats,
            keyring=KeyRing(load_master_key(settings.state_dir)),
        )
        provide_reports(app.state.platform)
        tasks = [asyncio.create_task(run_heartbeat(pool, "api"))]
        if settings.peer_poll_ms:
            tasks.append(asyncio.create_task(_peer_puller(app.state.platform)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            with contextlib.suppress(Exception):
                await forget(pool, "api")
            from exchange.wiring import stop_files

            await stop_files(app.state.platform)
            if not nats.is_closed:
                await nats.drain()
            await pool.close()

    rate_limits = RateLimits.configured(
        settings.rate_limit_per_second,
        settings.rate_limit_burst,
        settings.rate_limit_anonymous_per_second,
    )
    openapi_router = Router(OPENAPI_PATH, route_handlers=[], include_in_schema=False, opt=PUBLIC)
    app = Litestar(
        route_handlers=[*ROUTE_HANDLERS, *console_routers()],
        guards=[access_guard],
        dependencies=DEPENDENCIES | ROOM_SERVICES,
        exception_handlers=EXCEPTION_HANDLERS,
        request_class=ApiRequest,
        middleware=[
            RequestContextMiddleware,
            # One set of buckets per app, shared by every route (Litestar builds a middleware
            # stack per route, so the limits object is created here and passed in).
            DefineMiddleware(RateLimitMiddleware, limits=rate_limits),
            InputGuardMiddleware,
        ],
        before_send=[add_request_id_header, add_traceparent_header],
        lifespan=[lifespan],
        template_config=template_config(),
        request_max_body_size=settings.max_body_bytes,
        openapi_config=DocumentedOpenAPIConfig(
            title="dataex",
            version="0.1.0",
            description=(
                "A data exchange: listings, compliance review, standard contracts, settlement."
                " Errors are RFC 9457 problem details (application/problem+json)."
                f" Limits: request bodies up to {settings.max_body_bytes} bytes (413), JSON"
                f" nested at most {MAX_JSON_DEPTH} levels (400), in UTF-8 (400), no NUL characters"
                f" (422), no integer beyond ±{MAX_JSON_INTEGER} (422), path"
                f" and query parameters up to {MAX_PARAMETER_CHARS} characters (400);"
                f" {settings.rate_limit_per_second} requests/s per token (bursts of"
                f" {settings.rate_limit_burst}) and {settings.rate_limit_anonymous_per_second}/s"
                " per address without one, per API process (429 with Retry-After; 0 = off)."
            ),
            path=OPENAPI_PATH,
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin()],
            openapi_router=openapi_router,
        ),
        debug=False,
    )
    check_access_policies(app)
    declare_problem_responses(app.routes)
    app.state.rate_limits = rate_limits
    return app


async def _peer_puller(platform: Platform) -> None:
    from exchange import wiring
    from exchange.recognition.propagation import run_puller

    service = wiring.recognition(platform.pool, platform.clock, platform.settings, platform.keyring)
    await run_puller(service, platform.settings.peer_poll_ms / 1000)


def create_app_from_env() -> Litestar:
    """Factory for granian: settings from the environment, logging configured."""
    settings = Settings.from_env()
    configure_logging(settings.log_format, settings.log_level)
    return create_app(settings)
