"""Peers and recognitions: the trusted exchanges with their state, and their products as this
exchange recognised or refused them (with the local rules that refused), as ``/v1/peers`` and
``/v1/recognitions`` show them; distrusting a peer as ``DELETE /v1/peers/{code}`` does."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Final

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery
from litestar.response import Template

from exchange.console.web import ROOT, attempt, render, session_of
from exchange.platform.audit import Actor
from exchange.platform.auth import Principal, require_roles
from exchange.platform.errors import DataexError
from exchange.platform.paging import decode_cursor, encode_cursor
from exchange.recognition.service import RecognitionService

PAGE: Final = 50
OUTCOMES: Final = ("recognised", "refused")
# Who may distrust a peer: the roles of ``DELETE /v1/peers/{code}``.
DISTRUST_ROLES: Final = ("admin",)
_CODE: Final = re.compile(r"^[A-Z][A-Z0-9]{1,7}$")


def _code(value: str | None) -> str | None:
    value = (value or "").strip().upper()
    return value if _CODE.match(value) else None


def _cursor(cursor: str | None) -> tuple[datetime, str, str] | None:
    if not cursor:
        return None
    try:
        at, origin, code = decode_cursor(cursor, (datetime, str, str))
    except DataexError:
        return None
    return at, origin, code


class RecognitionPages(Controller):
    path = f"{ROOT}/recognition"

    @get("/")
    async def overview(
        self,
        request: Request[Any, Any, Any],
        recognition: NamedDependency[RecognitionService],
        peer: FromQuery[str | None] = None,
        outcome: FromQuery[str | None] = None,
        cursor: FromQuery[str | None] = None,
    ) -> Template:
        return await _page(request, recognition, peer=peer, outcome=outcome, cursor=cursor)

    @post("/peers/{code:str}/distrust")
    async def distrust(
        self,
        request: Request[Any, Any, Any],
        code: FromPath[str],
        recognition: NamedDependency[RecognitionService],
        actor: NamedDependency[Actor],
        principal: NamedDependency[Principal],
    ) -> Response[Any]:
        async def act() -> None:
            require_roles(principal, DISTRUST_ROLES)
            await recognition.remove_peer(actor, code)

        async def page(problem: DataexError) -> Template:
            return await _page(request, recognition, problem=problem)

        return await attempt(request, act, then=f"{ROOT}/recognition/", page=page)


async def _page(
    request: Request[Any, Any, Any],
    recognition: RecognitionService,
    *,
    peer: str | None = None,
    outcome: str | None = None,
    cursor: str | None = None,
    problem: DataexError | None = None,
) -> Template:
    principal = session_of(request).principal
    peer = _code(peer)
    outcome = outcome if outcome in OUTCOMES else None
    after = _cursor(cursor)
    peers = await recognition.peers()
    items = await recognition.recognitions_page(
        origin=peer, outcome=outcome, after=after, limit=PAGE
    )
    last = items[-1] if len(items) == PAGE else None
    filters = {"peer": peer, "outcome": outcome}
    query = "&".join(f"{k}={v}" for k, v in filters.items() if v)
    base = f"{ROOT}/recognition/"
    return render(
        request,
        "recognition.html",
        status_code=problem.status if problem else 200,
        problem=problem,
        peers=peers,
        counts=await recognition.outcome_counts(),
        recognitions=items,
        filters=filters,
        outcomes=OUTCOMES,
        can_distrust=principal.has(*DISTRUST_ROLES),
        can_audit=principal.has("admin"),
        next_page=(
            f"{base}?{query + '&' if query else ''}cursor="
            + encode_cursor(last.updated_at, last.origin, last.product_code)
            if last
            else None
        ),
        first_page=base + (f"?{query}" if query else "") if after else None,
    )
