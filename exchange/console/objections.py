"""Objections to a registration (异议登记) for staff: the list (open ones first, oldest first),
an objection's page with its claim, the claimant, the product as it stands and the decision, and
the staff's two actions, as ``POST /v1/listing-objections/{id}/suspension`` and ``/decision``
take them: suspend the listing pending the decision (reviewers), and uphold or dismiss it."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Final, Literal, get_args

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import Template

from exchange.console.products import keyset, page_link, reason_of
from exchange.console.review import age_class, age_text
from exchange.console.web import ROOT, attempt, render, uuid_or_none
from exchange.identity.service import organisation_names
from exchange.listings.objections import ObjectionService
from exchange.listings.schemas import ListingObjection, ListingObjectionDecision, Outcome
from exchange.listings.states import ObjectionState
from exchange.platform.audit import Actor
from exchange.platform.audit.repository import list_entries
from exchange.platform.auth import Principal, require_roles
from exchange.platform.errors import DataexError, FieldError, InvalidInput
from exchange.platform.paging import encode_cursor

PAGE: Final = 50
# The list's filter: the open objections (the default), the decided ones, or all.
Shown = Literal["registered", "decided", "all"]
SHOWN: Final[tuple[Shown, ...]] = get_args(Shown)
_STATES: Final[dict[Shown, tuple[ObjectionState, ...] | None]] = {
    "registered": ("registered",),
    "decided": ("upheld", "dismissed"),
    "all": None,
}
OUTCOMES: Final[tuple[Outcome, ...]] = get_args(Outcome)
# Who may suspend a listing for an objection: the roles of its /v1 route (deciding: any staff).
SUSPEND_ROLES: Final = ("reviewer",)
# The product states a suspension pending an objection can start from (else the service's 409).
HOLDABLE: Final = ("listed",)
# What the page says after an action (``?done=``): never text from the address itself.
DONE: Final = ("suspended", "upheld", "dismissed")


def decision_of(form: Any) -> ListingObjectionDecision:
    """The decision form as the API's `ListingObjectionDecision`, validated as the API does."""
    outcome = form.get("outcome")
    raw = form.get("reason")
    reason = raw.strip() if isinstance(raw, str) else ""
    try:
        return msgspec.convert(
            {"outcome": outcome if isinstance(outcome, str) else "", "reason": reason},
            ListingObjectionDecision,
        )
    except msgspec.ValidationError as error:
        path = "outcome" if "outcome" in str(error) else "reason"
        raise InvalidInput(
            f"choose upheld or dismissed and give a reason (1 to 2,000 characters): {error}",
            errors=[FieldError(path=path, message=str(error), source="form")],
        ) from error


class ObjectionPages(Controller):
    path = f"{ROOT}/objections"

    @get("/")
    async def objection_list(
        self,
        request: Request[Any, Any, Any],
        objections: NamedDependency[ObjectionService],
        shown_name: Annotated[str | None, QueryParameter(name="state")] = None,
        product: FromQuery[str | None] = None,
        cursor: FromQuery[str | None] = None,
    ) -> Template:
        shown: Shown = next((s for s in SHOWN if s == shown_name), "registered")
        product_id = uuid_or_none(product)
        after = keyset(cursor)
        rows = await objections.find(
            state=_STATES[shown], after=after, limit=PAGE, product_id=product_id
        )
        now = objections.clock.now()
        filters = {"state": None if shown == "registered" else shown, "product": product_id}
        base = f"{ROOT}/objections/"
        return render(
            request,
            "objections.html",
            rows=rows,
            shown=shown,
            choices=SHOWN,
            product_id=product_id,
            every_product=page_link(base, {"state": filters["state"]}),
            tab=lambda choice: page_link(
                base, {"state": None if choice == "registered" else choice, "product": product_id}
            ),
            age_class=lambda o: age_class(o.registered_at, now),
            age_text=lambda t, o: age_text(t, o.registered_at, now),
            next_page=(
                page_link(base, filters, encode_cursor(rows[-1].registered_at, rows[-1].id))
                if len(rows) == PAGE
                else None
            ),
            first_page=page_link(base, filters) if after else None,
        )

    @get("/{objection_id:uuid}")
    async def objection(
        self,
        request: Request[Any, Any, Any],
        objection_id: FromPath[uuid.UUID],
        objections: NamedDependency[ObjectionService],
        principal: NamedDependency[Principal],
        done: FromQuery[str | None] = None,
    ) -> Template:
        return await objection_page(
            request, objection_id, objections, principal, done=done if done in DONE else None
        )

    @post("/{objection_id:uuid}/suspend")
    async def suspend(
        self,
        request: Request[Any, Any, Any],
        objection_id: FromPath[uuid.UUID],
        objections: NamedDependency[ObjectionService],
        actor: NamedDependency[Actor],
        principal: NamedDependency[Principal],
    ) -> Response[Any]:
        form = await request.form()

        async def act() -> None:
            require_roles(principal, SUSPEND_ROLES)
            await objections.suspend_listing(actor, objection_id, reason_of(form))

        return await _act(request, objection_id, objections, principal, act, form, "suspended")

    @post("/{objection_id:uuid}/decide")
    async def decide(
        self,
        request: Request[Any, Any, Any],
        objection_id: FromPath[uuid.UUID],
        objections: NamedDependency[ObjectionService],
        actor: NamedDependency[Actor],
        principal: NamedDependency[Principal],
    ) -> Response[Any]:
        form = await request.form()
        chosen = form.get("outcome")

        async def act() -> None:
            await objections.decide(actor, objection_id, decision_of(form))

        # On success the outcome was one of OUTCOMES (else `decision_of` refused the form).
        done = chosen if isinstance(chosen, str) and chosen in OUTCOMES else None
        return await _act(request, objection_id, objections, principal, act, form, done)


async def _act(
    request: Request[Any, Any, Any],
    objection_id: uuid.UUID,
    objections: ObjectionService,
    principal: Principal,
    action: Callable[[], Awaitable[None]],
    form: Any,
    done: str | None,
) -> Response[Any]:
    """The API's own call, then 303 back to the objection's page saying what was done; on a
    problem, the page again with the problem's text (and the form as it was sent)."""
    which = "suspend" if done == "suspended" else "decide"

    async def page(problem: DataexError) -> Template:
        return await objection_page(
            request, objection_id, objections, principal, problem=problem, form=form, action=which
        )

    here = f"{ROOT}/objections/{objection_id}"
    return await attempt(request, action, then=f"{here}?done={done}" if done else here, page=page)


async def objection_page(
    request: Request[Any, Any, Any],
    objection_id: uuid.UUID,
    objections: ObjectionService,
    principal: Principal,
    *,
    problem: DataexError | None = None,
    form: Any = None,
    action: str | None = None,
    done: str | None = None,
) -> Template:
    found: ListingObjection = await objections.get(principal, objection_id)
    product = await objections.listings.get(principal, found.product_id)
    names = await organisation_names(objections.pool, [found.claimant_org_id, found.seller_org_id])
    history = list(
        reversed(
            await list_entries(
                objections.pool,
                limit=50,
                subject_type="listing_objection",
                subject_id=str(objection_id),
            )
        )
    )  # oldest first
    decided_by = next((e for e in history if e.action == f"listing_objection.{found.state}"), None)
    shown = product.live or product.pending
    open_ = found.state == "registered"
    held_by_objections = product.state == "suspended" and product.suspended_by == "objection"
    return render(
        request,
        "objection.html",
        status_code=problem.status if problem else 200,
        objection=found,
        product=product,
        product_name=(shown.metadata.name_zh, shown.metadata.name_en) if shown else None,
        claimant_name=names.get(found.claimant_org_id),
        seller_name=names.get(found.seller_org_id),
        decided_by=decided_by,
        history=history,
        may_suspend=principal.has(*SUSPEND_ROLES),
        can_suspend=open_
        and not found.suspended_listing
        and (product.state in HOLDABLE or held_by_objections),
        can_decide=open_,
        outcomes=OUTCOMES,
        problem=problem,
        form=form or {},
        action=action,
        done=done,
    )
