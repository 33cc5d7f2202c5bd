"""The console as the app factory composes it: one router under ``/console`` (left out of the
API's OpenAPI document), its static files, its templates and its error pages."""

from __future__ import annotations

from typing import Any

from litestar import Router

from exchange.console.audit import AuditPages
from exchange.console.disputes import DisputePages
from exchange.console.grants import GrantPages
from exchange.console.home import HomePage
from exchange.console.objections import ObjectionPages
from exchange.console.policy import PolicyPages
from exchange.console.products import ProductPages
from exchange.console.recognition import RecognitionPages
from exchange.console.review import ReviewPages
from exchange.console.settlement import SettlementPages
from exchange.console.signin import SignInController
from exchange.console.trades import TradePages
from exchange.console.web import (
    EXCEPTION_HANDLERS,
    ServerTiming,
    console_guard,
    static_router,
)
from exchange.platform.auth import CONSOLE

PAGES: list[Any] = [
    SignInController,
    HomePage,
    ReviewPages,
    ProductPages,
    ObjectionPages,
    TradePages,
    DisputePages,
    RecognitionPages,
    GrantPages,
    AuditPages,
    SettlementPages,
    PolicyPages,
]


def console_routers() -> list[Router]:
    pages = Router(
        "/",
        route_handlers=PAGES,
        guards=[console_guard],
        middleware=[ServerTiming],
        exception_handlers=dict(EXCEPTION_HANDLERS),
        include_in_schema=False,
        opt=CONSOLE,
    )
    return [pages, static_router()]
