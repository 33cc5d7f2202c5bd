"""Litestar dependency providers shared by every controller."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.di import Provide

from exchange.platform.audit.repository import Actor
from exchange.platform.auth import Principal, provide_principal
from exchange.platform.context import Platform
from exchange.platform.http import request_id_of, trace_of


def provide_platform(request: Request[Any, Any, Any]) -> Platform:
    return request.app.state.platform  # type: ignore[no-any-return]


def provide_actor(request: Request[Any, Any, Any]) -> Actor:
    principal: Principal = provide_principal(request)
    return Actor.of(principal, request_id_of(request.scope), trace_of(request.scope).header)


DEPENDENCIES = {
    "platform": Provide(provide_platform, sync_to_thread=False),
    "principal": Provide(provide_principal, sync_to_thread=False),
    "actor": Provide(provide_actor, sync_to_thread=False),
}
