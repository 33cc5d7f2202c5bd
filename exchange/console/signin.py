"""Signing in and out of the console, and the language switch."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie
from litestar.params import FromQuery
from litestar.response import Template

from exchange.console.i18n import LANGUAGES
from exchange.console.web import (
    LANGUAGE_COOKIE,
    OPEN,
    ROOT,
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    platform_of,
    render,
    safe_next,
    see_other,
    session_cookie,
    session_of,
    sessions,
    sign_in_token,
)
from exchange.platform.audit import Actor, record
from exchange.platform.auth import STAFF_ROLES, principal_for
from exchange.platform.errors import DataexError, Forbidden, Unauthenticated
from exchange.platform.http import request_id_of

MAX_FORM_TOKEN = 200


class SignInController(Controller):
    path = ROOT

    @get("/sign-in", opt=OPEN, sync_to_thread=False)
    def sign_in_page(
        self, request: Request[Any, Any, Any], why: FromQuery[str | None] = None
    ) -> Template:
        return _sign_in_form(request, safe_next(request.query_params.get("next")), why)

    @post("/sign-in", opt=OPEN, status_code=303)
    async def sign_in(self, request: Request[Any, Any, Any]) -> Response[Any]:
        form = await request.form()
        target = safe_next(_text(form.get("next")))
        given = _text(form.get("_sign_in"))
        expected = request.cookies.get(SIGN_IN_COOKIE)
        if not given or not expected or given != expected:
            return _sign_in_form(
                request, target, None, Forbidden("the sign-in form expired: try again")
            )
        platform = platform_of(request)
        now = platform.clock.now()
        try:
            principal = await principal_for(
                platform.pool, now, (_text(form.get("token")) or "").strip()[:MAX_FORM_TOKEN]
            )
        except Unauthenticated as error:
            return _sign_in_form(request, target, None, error)
        if not principal.has(*STAFF_ROLES):
            return _sign_in_form(
                request,
                target,
                None,
                Forbidden(
                    "the console is for exchange staff: this token has the roles"
                    f" {', '.join(sorted(principal.roles)) or 'none'}, not reviewer or admin"
                ),
            )
        session_id, _ = await sessions(platform).open(principal, now)
        async with platform.pool.acquire() as conn:
            await record(
                conn,
                Actor.of(principal, request_id_of(request.scope)),
                at=now,
                action="console.signed_in",
                subject_type="token",
                subject_id=principal.token_id,
            )
        response = see_other(target)
        response.cookies.append(
            session_cookie(
                session_id,
                secure=request.url.scheme == "https",
                max_age=platform.settings.console_lifetime_hours * 3600,
            )
        )
        response.delete_cookie(SIGN_IN_COOKIE, path=ROOT)
        return response

    @post("/sign-out", status_code=303)
    async def sign_out(self, request: Request[Any, Any, Any]) -> Response[Any]:
        platform = platform_of(request)
        session = session_of(request)
        now = platform.clock.now()
        await sessions(platform).end(request.cookies[SESSION_COOKIE], now, "signed_out")
        async with platform.pool.acquire() as conn:
            await record(
                conn,
                Actor.of(session.principal, request_id_of(request.scope)),
                at=now,
                action="console.signed_out",
                subject_type="token",
                subject_id=session.principal.token_id,
            )
        response = see_other(f"{ROOT}/sign-in")
        response.delete_cookie(SESSION_COOKIE, path=ROOT)
        return response

    @get("/language", opt=OPEN, status_code=303, sync_to_thread=False)
    def switch_language(self, request: Request[Any, Any, Any]) -> Response[Any]:
        """A preference, not an action: a link (GET) sets it for a year."""
        to = request.query_params.get("to")
        response = see_other(safe_next(request.query_params.get("next")))
        if to in LANGUAGES:
            response.cookies.append(
                Cookie(
                    key=LANGUAGE_COOKIE,
                    value=to,
                    path=ROOT,
                    max_age=365 * 86400,
                    samesite="lax",
                    httponly=True,
                )
            )
        return response


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _sign_in_form(
    request: Request[Any, Any, Any],
    target: str,
    why: str | None,
    problem: DataexError | None = None,
) -> Template:
    token = sign_in_token()
    page = render(
        request,
        "sign_in.html",
        status_code=problem.status if problem else 200,
        next_path=target,
        sign_in_token=token,
        why=why if why in ("expired",) else None,
        problem=problem,
    )
    page.cookies.append(
        Cookie(
            key=SIGN_IN_COOKIE,
            value=token,
            path=ROOT,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            max_age=3600,
        )
    )
    return page
