"""Delivery grants: the list, a grant's page with the staff's suspend and resume (as
``POST /v1/grants/{id}/suspend|resume`` do), and usage across grants per product and per buyer."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Final, get_args

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import Template

from exchange.console.web import ROOT, attempt, render, session_of, uuid_or_none
from exchange.delivery.schemas import SuspendIn, UsageGrouping
from exchange.delivery.service import GrantService
from exchange.delivery.states import LIVE
from exchange.platform.audit import Actor
from exchange.platform.auth import Principal, require_roles
from exchange.platform.errors import DataexError, FieldError, InvalidInput
from exchange.platform.events import GrantState
from exchange.platform.paging import decode_cursor, encode_cursor

PAGE: Final = 50
STATES: Final[tuple[str, ...]] = get_args(GrantState)
GROUPINGS: Final[tuple[str, ...]] = get_args(UsageGrouping)
# Who may suspend and resume a grant: the roles of ``POST /v1/grants/{id}/suspend|resume``.
STAFF_ACTION_ROLES: Final = ("admin",)
# The cause a staff suspension records and a staff resumption lifts (the API's default).
STAFF_CAUSE: Final = "exchange"


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def suspension_of(form: Any) -> SuspendIn:
    """The suspend form as the API's `SuspendIn`, validated as the API validates it."""
    try:
        return msgspec.convert({"reason": _text(form.get("reason"))}, SuspendIn)
    except msgspec.ValidationError as error:
        raise InvalidInput(
            f"a reason is needed to suspend a grant: {error}",
            errors=[FieldError(path="reason", message=str(error), source="form")],
        ) from error


class GrantPages(Controller):
    path = f"{ROOT}/grants"

    @get("/")
    async def grant_list(
        self,
        request: Request[Any, Any, Any],
        grants: NamedDependency[GrantService],
        grant_state: Annotated[str | None, QueryParameter(name="state")] = None,
        product_code: FromQuery[str | None] = None,
        buyer: FromQuery[str | None] = None,
        cursor: FromQuery[str | None] = None,
    ) -> Template:
        principal = session_of(request).principal
        state = grant_state if grant_state in STATES else None
        product_code = _text(product_code)[:40] or None
        buyer_id = uuid_or_none(_text(buyer))
        after = _grant_cursor(cursor)
        items = await grants.list_for(
            principal, state=state, product_code=product_code, after=after, limit=PAGE,
            buyer_org_id=buyer_id,
        )  # fmt: skip
        filters = {"state": state, "product_code": product_code, "buyer": buyer_id}
        query = "&".join(f"{k}={v}" for k, v in filters.items() if v)
        base = f"{ROOT}/grants/"
        last = items[-1] if len(items) == PAGE else None
        return render(
            request,
            "grants.html",
            grants=items,
            filters=filters,
            states=STATES,
            next_page=(
                f"{base}?{query + '&' if query else ''}cursor="
                + encode_cursor(last.created_at, last.id)
                if last
                else None
            ),
            first_page=base + (f"?{query}" if query else "") if after else None,
        )

    @get("/usage")
    async def usage(
        self,
        request: Request[Any, Any, Any],
        grants: NamedDependency[GrantService],
        by: FromQuery[str] = "product",
        cursor: FromQuery[str | None] = None,
    ) -> Template:
        principal = session_of(request).principal
        grouping: UsageGrouping = "buyer" if by == "buyer" else "product"
        after = _usage_cursor(cursor)
        groups = await grants.usage_by(principal, grouping, after=after, limit=PAGE)
        base = f"{ROOT}/grants/usage?by={grouping}"
        last = groups[-1] if len(groups) == PAGE else None
        return render(
            request,
            "grant_usage.html",
            by=grouping,
            groupings=GROUPINGS,
            groups=groups,
            next_page=f"{base}&cursor={encode_cursor(last.label, last.key)}" if last else None,
            first_page=base if after else None,
        )

    @get("/{grant_id:uuid}")
    async def grant(
        self,
        request: Request[Any, Any, Any],
        grant_id: FromPath[uuid.UUID],
        grants: NamedDependency[GrantService],
    ) -> Template:
        return await _grant_page(request, grant_id, grants)

    @post("/{grant_id:uuid}/suspend")
    async def suspend(
        self,
        request: Request[Any, Any, Any],
        grant_id: FromPath[uuid.UUID],
        grants: NamedDependency[GrantService],
        actor: NamedDependency[Actor],
        principal: NamedDependency[Principal],
    ) -> Response[Any]:
        return await _act(
            request, grant_id, grants, principal,
            lambda form: grants.suspend(actor, grant_id, suspension_of(form).reason),
        )  # fmt: skip

    @post("/{grant_id:uuid}/resume")
    async def resume(
        self,
        request: Request[Any, Any, Any],
        grant_id: FromPath[uuid.UUID],
        grants: NamedDependency[GrantService],
        actor: NamedDependency[Actor],
        principal: NamedDependency[Principal],
    ) -> Response[Any]:
        return await _act(
            request, grant_id, grants, principal, lambda _form: grants.resume(actor, grant_id)
        )


async def _act(
    request: Request[Any, Any, Any],
    grant_id: uuid.UUID,
    grants: GrantService,
    principal: Principal,
    action: Callable[[Any], Awaitable[Any]],
) -> Response[Any]:
    """A staff action on the grant with the form sent, for the roles of the API's own route;
    then back to the grant's page, or on a problem, the page again with it (and the form)."""
    form = await request.form()

    async def act() -> None:
        require_roles(principal, STAFF_ACTION_ROLES)
        await action(form)

    async def page(problem: DataexError) -> Template:
        return await _grant_page(request, grant_id, grants, problem=problem, form=form)

    return await attempt(request, act, then=f"{ROOT}/grants/{grant_id}", page=page)


async def _grant_page(
    request: Request[Any, Any, Any],
    grant_id: uuid.UUID,
    grants: GrantService,
    *,
    problem: DataexError | None = None,
    form: Any = None,
) -> Template:
    principal = session_of(request).principal
    grant = await grants.get(principal, grant_id)
    usage = await grants.usage(principal, grant_id)
    may_act = principal.has(*STAFF_ACTION_ROLES)
    return render(
        request,
        "grant.html",
        status_code=problem.status if problem else 200,
        problem=problem,
        form=form or {},
        grant=grant,
        usage=usage,
        may_act=may_act,
        can_suspend=grant.state in LIVE and STAFF_CAUSE not in grant.suspended_by,
        can_resume=grant.state == "suspended" and STAFF_CAUSE in grant.suspended_by,
    )


def _grant_cursor(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    if not cursor:
        return None
    try:
        at, grant_id = decode_cursor(cursor, (datetime, uuid.UUID))
    except DataexError:
        return None
    return at, grant_id


def _usage_cursor(cursor: str | None) -> tuple[str, uuid.UUID] | None:
    if not cursor:
        return None
    try:
        label, key = decode_cursor(cursor, (str, uuid.UUID))
    except DataexError:
        return None
    return label, key
