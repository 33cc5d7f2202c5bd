"""What every console page shares: the session guard, CSRF, security headers, rendering in the
reader's language, and errors as pages.

Pages are server-rendered (Jinja) and work without JavaScript: every action is a plain form
(POST, then a 303 to the page to show). htmx (vendored, with its integrity hash) boosts links
and forms so that only the page body is swapped, and swaps error pages too (4xx), so a refused
action shows its problem's text where the reader is.

Every action calls the same service the API's route calls, with the same `Principal` and
`Actor`, so the access rules, the audit rows and the events are the API's own.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, urlsplit

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from litestar import Request, Response
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.enums import ScopeType
from litestar.handlers.base import BaseRouteHandler
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect, Template
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from exchange.console.i18n import Language, Translator, language_of
from exchange.console.sessions import Expired, Session, SessionStore
from exchange.platform.auth import PUBLIC, STAFF_ROLES, Principal, route_access
from exchange.platform.context import Platform
from exchange.platform.errors import DataexError, Forbidden, Unauthenticated
from exchange.platform.http import request_id_of
from exchange.platform.logging import get_logger

log = get_logger(__name__)

ROOT: Final = "/console"
HERE: Final = Path(__file__).parent
TEMPLATES_DIR: Final = HERE / "templates"
STATIC_DIR: Final = HERE / "static"
SESSION_COOKIE: Final = "dx_console"
LANGUAGE_COOKIE: Final = "dx_lang"
SIGN_IN_COOKIE: Final = "dx_sign_in"  # the sign-in form's own CSRF token (double submit)
CSRF_FIELD: Final = "_csrf"
# The vendored htmx (static/htmx.min.js, htmx.org 2.0.11 from the npm registry, 0BSD): the
# page loads it with this Subresource Integrity hash; a test checks the file against it.
HTMX_VERSION: Final = "2.0.11"
HTMX_INTEGRITY: Final = "sha384-2OatzQy1H+Zd/IIrjr1TcuDGqLXeHhbooAyJY1KdQMKnr4LZ22k31GBLdYKHmVjg"
CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
# The console's navigation: (message key, path). A page added to the console adds its line.
NAV: Final[list[tuple[str, str]]] = [
    ("nav.dashboard", f"{ROOT}/"),
    ("nav.queue", f"{ROOT}/reviews"),
    ("nav.products", f"{ROOT}/products"),
    ("nav.objections", f"{ROOT}/objections"),
    ("nav.trades", f"{ROOT}/trades"),
    ("nav.disputes", f"{ROOT}/disputes"),
    ("nav.recognition", f"{ROOT}/recognition"),
    ("nav.grants", f"{ROOT}/grants"),
    ("nav.audit", f"{ROOT}/audit"),
    ("nav.settlement", f"{ROOT}/settlement"),
    ("nav.policy", f"{ROOT}/policy"),
]
# Pages only some staff may open (as their /v1 routes): shown in the navigation to those only.
NAV_ROLES: Final[dict[str, tuple[str, ...]]] = {f"{ROOT}/audit": ("admin",)}
# Route opt of the pages anyone may open (sign-in, the language switch).
OPEN: Final = {"console_open": True}


class SignInRequired(Exception):
    """No live session: back to the sign-in page (saying why, if the session ended)."""

    def __init__(self, reason: str | None) -> None:
        super().__init__(reason or "sign in")
        self.reason = reason


def sessions(platform: Platform) -> SessionStore:
    store = platform.shared.get("console_sessions")
    if store is None:
        settings = platform.settings
        store = platform.shared["console_sessions"] = SessionStore(
            platform.pool,
            idle=timedelta(minutes=settings.console_idle_minutes),
            lifetime=timedelta(hours=settings.console_lifetime_hours),
        )
    assert isinstance(store, SessionStore)
    return store


def platform_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Platform:
    platform = connection.app.state.platform
    assert isinstance(platform, Platform)
    return platform


async def console_guard(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """Resolve the session cookie to the staff member's principal; check CSRF on a POST."""
    if route_access(handler) != "console" or handler.opt.get("console_open"):
        return
    platform = platform_of(connection)
    cookie = connection.cookies.get(SESSION_COOKIE)
    if not cookie:
        raise SignInRequired(None)
    try:
        session = await sessions(platform).resolve(cookie, platform.clock.now())
    except Expired as ended:
        raise SignInRequired("expired") from ended
    except Unauthenticated as unknown:
        raise SignInRequired(None) from unknown
    connection.state.principal = session.principal
    connection.state.console_session = session
    from structlog.contextvars import bind_contextvars

    bind_contextvars(org_id=str(session.principal.org_id), token_id=str(session.principal.token_id))
    if not session.principal.has(*STAFF_ROLES):  # roles taken away since sign-in
        raise Forbidden("the console is for exchange staff (reviewer or admin roles)")
    if isinstance(connection, Request) and connection.method == "POST":
        form = await connection.form()
        given = form.get(CSRF_FIELD) or connection.headers.get("x-csrf-token")
        if not session.csrf_matches(given if isinstance(given, str) else None):
            raise Forbidden(
                "the form's CSRF token is missing or wrong: reload the page and try again",
                extensions={"csrf": True},
            )


class ServerTiming:
    """ASGI middleware of the console's pages: ``Server-Timing: app;dur=<ms>`` on the answer to a
    signed-in staff member, the server's own time from the console router's entry (after the
    app's rate limiter and input guard) to the response's start: the session check, the
    page's queries and its rendering. ``dataex bench console`` reports it beside the time its
    client observed. Not sent before sign-in, where it would only time the sign-in form."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.start" and isinstance(
                scope.get("state", {}).get("console_session"), Session
            ):
                elapsed = (time.perf_counter() - started) * 1000
                message["headers"] = [
                    *message.get("headers", ()),
                    (b"server-timing", f"app;dur={elapsed:.2f}".encode()),
                ]
            await send(message)

        await self.app(scope, receive, timed)


def session_of(request: Request[Any, Any, Any]) -> Session:
    session = getattr(request.state, "console_session", None)
    assert isinstance(session, Session), "a console page without a session"
    return session


def language(request: Request[Any, Any, Any]) -> Language:
    return language_of(request.cookies.get(LANGUAGE_COOKIE))


def render(
    request: Request[Any, Any, Any],
    template: str,
    status_code: int = 200,
    **context: Any,
) -> Template:
    """A page in the reader's language, with what every page needs."""
    lang = language(request)
    session = getattr(request.state, "console_session", None)
    principal: Principal | None = session.principal if isinstance(session, Session) else None
    return Template(
        template_name=template,
        status_code=status_code,
        headers=SECURITY_HEADERS,
        context={
            "t": Translator(lang),
            "lang": lang,
            "csrf": session.csrf if isinstance(session, Session) else None,
            "csrf_field": CSRF_FIELD,
            "principal": principal,
            "nav": [
                (key, href)
                for key, href in NAV
                if principal is not None and principal.has(*NAV_ROLES.get(href, STAFF_ROLES))
            ],
            "path": request.url.path,
            "full_path": _here(request),
            "htmx_integrity": HTMX_INTEGRITY,
            "root": ROOT,
            "request_id": request_id_of(request.scope),
            **context,
        },
    )


async def attempt(
    request: Request[Any, Any, Any],
    action: Callable[[], Awaitable[Any]],
    *,
    then: str,
    page: Callable[[DataexError], Awaitable[Template]],
) -> Response[Any]:
    """Run a form's action: on success 303 to ``then``; on a problem, the page again with the
    problem's text, under the problem's status (so htmx and tests see it failed)."""
    try:
        await action()
    except DataexError as problem:
        return await page(problem)
    return see_other(then)


def see_other(path: str) -> Redirect:
    return Redirect(path=path, status_code=303, headers=SECURITY_HEADERS)


def safe_next(value: str | None) -> str:
    """Where to go after sign-in or a language switch: only a console path (never elsewhere)."""
    if not value:
        return f"{ROOT}/"
    parts = urlsplit(value)
    if (
        parts.scheme
        or parts.netloc
        or not (parts.path == ROOT or parts.path.startswith(ROOT + "/"))
    ):
        return f"{ROOT}/"
    if "\\" in value or "//" in parts.path:
        return f"{ROOT}/"
    return value


def _here(request: Request[Any, Any, Any]) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


def session_cookie(value: str, *, secure: bool, max_age: int | None) -> Cookie:
    return Cookie(
        key=SESSION_COOKIE,
        value=value,
        path=ROOT,
        httponly=True,
        samesite="strict",
        secure=secure,
        max_age=max_age,
    )


def sign_in_token() -> str:
    return secrets.token_urlsafe(24)


# --- errors as pages -------------------------------------------------------------------------


def _sign_in_redirect(request: Request[Any, Any, Any], error: SignInRequired) -> Response[Any]:
    target = f"{ROOT}/sign-in?next={quote(_here(request), safe='')}"
    if error.reason:
        target += f"&why={error.reason}"
    if request.headers.get("hx-request"):
        # htmx follows a 303 itself and would swap the sign-in page into the body under the
        # old address; a client redirect moves the whole page.
        return Response(content=b"", status_code=204, headers={"HX-Redirect": target})
    response: Response[Any] = Redirect(path=target, status_code=303, headers=SECURITY_HEADERS)
    if error.reason:
        response.delete_cookie(SESSION_COOKIE, path=ROOT)
    return response


def problem_page(request: Request[Any, Any, Any], error: DataexError) -> Template:
    if error.status >= 500:
        log.error("console_failed", code=error.code, detail=error.detail)
    return render(request, "error.html", status_code=error.status, problem=error)


def unexpected_page(request: Request[Any, Any, Any], error: Exception) -> Template:
    from exchange.platform.db import database_unreachable

    if database_unreachable(error):
        problem: DataexError = _Unavailable("PostgreSQL cannot be reached just now; retry shortly")
    else:
        log.error("console_unhandled_error", error_type=type(error).__name__, exc_info=error)
        problem = _Internal(
            "the server failed unexpectedly; the cause is logged under request id"
            f" {request_id_of(request.scope)}"
        )
    return render(request, "error.html", status_code=problem.status, problem=problem)


class _Internal(DataexError):
    status = 500
    code = "internal_error"
    title = "Internal error"


class _Unavailable(DataexError):
    status = 503
    code = "dependency_unavailable"
    title = "A dependency is unavailable"


EXCEPTION_HANDLERS: Final[Mapping[Any, Any]] = {
    SignInRequired: _sign_in_redirect,
    DataexError: problem_page,
    Exception: unexpected_page,
}


def template_config() -> TemplateConfig[JinjaTemplateEngine]:
    environment = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    environment.filters["short"] = lambda value: str(value)[:8]
    return TemplateConfig(instance=JinjaTemplateEngine.from_environment(environment))


def static_router() -> Any:
    return create_static_files_router(
        path=f"{ROOT}/static",
        directories=[STATIC_DIR],
        opt=PUBLIC,
        include_in_schema=False,
        name="console_static",
    )


def uuid_or_none(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        return None
