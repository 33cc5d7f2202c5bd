"""Bearer tokens, the principal behind a request, and the one guard every route passes.

A token is ``dxt_<token id hex>_<secret>``; only SHA-256 of the whole token is stored, so a
leaked database gives no usable token. Every route declares its access in ``opt``: either
`PUBLIC` or `requires(...)`; the app factory refuses to start with a route that declares neither.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Literal

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from exchange.platform.errors import Forbidden, Unauthenticated

Role = Literal["seller", "buyer", "reviewer", "admin"]
ROLES: Final = ("seller", "buyer", "reviewer", "admin")
STAFF_ROLES: Final = frozenset({"reviewer", "admin"})
MARKET_ROLES: Final = frozenset({"seller", "buyer"})

ACCESS_KEY: Final = "access"
PUBLIC: Final[dict[str, Any]] = {ACCESS_KEY: "public"}
# Routes that take a delivery token (a short-lived JWS for one grant, not an API token): the
# guard lets them through and the route checks the token itself.
DELIVERY_TOKEN: Final[dict[str, Any]] = {ACCESS_KEY: "delivery_token"}
# The staff console's pages: a server-side session (a cookie), not a bearer token; the console's
# own guard resolves it to the same `Principal` and checks the staff roles.
CONSOLE: Final[dict[str, Any]] = {ACCESS_KEY: "console"}
PASSED_THROUGH: Final = frozenset({"public", "delivery_token", "console"})
_PREFIX: Final = "dxt_"


def requires(*roles: Role) -> dict[str, Any]:
    """Route ``opt`` for an authenticated route; with roles, the token must carry one of them."""
    return {ACCESS_KEY: tuple(roles) if roles else "authenticated"}


def route_access(handler: BaseRouteHandler) -> str | tuple[str, ...] | None:
    """The declared access of a route: "public", "delivery_token", "console", "authenticated", a
    tuple of roles, or None."""
    value = handler.opt.get(ACCESS_KEY)
    if value is None and is_automatic_options(handler):
        return "public"  # Litestar's own OPTIONS answer: an Allow header and nothing else
    return value


def is_automatic_options(handler: BaseRouteHandler) -> bool:
    return getattr(handler, "http_methods", None) == {"OPTIONS"} and (
        handler.handler_name == "options_handler"
    )


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the organisation, the token, and the roles this request may use."""

    org_id: uuid.UUID
    org_name: str
    token_id: uuid.UUID
    roles: frozenset[str]
    is_operator: bool

    def has(self, *roles: str) -> bool:
        return bool(self.roles.intersection(roles))


def new_token() -> tuple[uuid.UUID, str, bytes]:
    """A fresh token: its id, the secret string shown once, and the hash that is stored."""
    token_id = uuid.uuid4()
    token = f"{_PREFIX}{token_id.hex}_{secrets.token_urlsafe(32)}"
    return token_id, token, hash_token(token)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    header = connection.headers.get("authorization")
    if not header:
        raise Unauthenticated("no bearer token: send 'Authorization: Bearer <token>'")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header must be 'Bearer <token>'")
    token = token.strip()
    if not token.startswith(_PREFIX) or len(token) > 200:
        raise Unauthenticated("unknown token")
    return token


_AUTH_SQL: Final = """
SELECT t.id AS token_id, t.roles AS token_roles, t.expires_at, t.revoked_at,
       o.id AS org_id, o.name AS org_name, o.roles AS org_roles, o.is_operator
FROM api_tokens t JOIN organisations o ON o.id = t.org_id
WHERE t.token_hash = $1
"""


async def authenticate(connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
    """Resolve the bearer token to a principal, or raise `Unauthenticated` saying why."""
    platform = connection.app.state.platform
    return await principal_for(platform.pool, platform.clock.now(), bearer_token(connection))


async def principal_for(pool: Any, now: datetime, token: str) -> Principal:
    """The principal a token stands for now, or `Unauthenticated` saying why not."""
    if not token.startswith(_PREFIX) or len(token) > 200:
        raise Unauthenticated("unknown token")
    row = await pool.fetchrow(_AUTH_SQL, hash_token(token))
    if row is None:
        raise Unauthenticated("unknown token")
    if row["revoked_at"] is not None:
        raise Unauthenticated(f"token revoked at {row['revoked_at'].isoformat()}")
    if row["expires_at"] <= now:
        raise Unauthenticated(f"token expired at {row['expires_at'].isoformat()}")
    return principal_of(row)


def principal_of(row: Any) -> Principal:
    """A principal from a row of token and organisation (`_AUTH_SQL`'s columns)."""
    # A token never holds more than its organisation holds now: removing a role from an
    # organisation takes it away from every token at once.
    roles = frozenset(row["token_roles"]).intersection(row["org_roles"])
    return Principal(
        org_id=row["org_id"],
        org_name=row["org_name"],
        token_id=row["token_id"],
        roles=roles,
        is_operator=row["is_operator"],
    )


async def access_guard(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """The app-wide guard: authenticate unless public, then check the route's roles."""
    access = route_access(handler)
    if access in PASSED_THROUGH:
        return
    principal = await authenticate(connection)
    connection.state.principal = principal
    from structlog.contextvars import bind_contextvars

    bind_contextvars(org_id=str(principal.org_id), token_id=str(principal.token_id))
    if isinstance(access, tuple):
        require_roles(principal, access)


def require_roles(principal: Principal, roles: tuple[str, ...]) -> None:
    """What ``requires(*roles)`` asks of a caller: one of ``roles``, or a 403 naming them.
    The API's guard applies it per route; the console applies it to the same actions."""
    if not principal.has(*roles):
        raise Forbidden(
            f"this route needs one of the roles {', '.join(roles)};"
            f" the token has {', '.join(sorted(principal.roles)) or 'none'}",
            extensions={"required_roles": list(roles)},
        )


def provide_principal(request: Request[Any, Any, Any]) -> Principal:
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):  # a public route asked for one: a programming error
        raise Unauthenticated("this route needs a token")
    return principal
