"""Products for staff: search every state, a product's page, and suspend or reinstate it with a
reason, as ``POST /v1/products/{id}/suspend`` and ``/reinstate`` do."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Final, Literal, get_args
from urllib.parse import quote, urlencode

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import Template

from exchange.console.web import ROOT, attempt, render
from exchange.identity.service import organisation_names
from exchange.listings.objections import ObjectionService
from exchange.listings.schemas import Product, Reason
from exchange.listings.service import ListingService
from exchange.listings.states import PRODUCT, ProductState
from exchange.platform.audit import Actor
from exchange.platform.audit.repository import list_entries
from exchange.platform.auth import Principal
from exchange.platform.errors import DataexError, FieldError, InvalidInput
from exchange.platform.paging import decode_cursor, encode_cursor

PAGE: Final = 50
OBJECTIONS_SHOWN: Final = 20  # a product's objections on its page, oldest first
STATES: Final[tuple[ProductState, ...]] = get_args(ProductState)
MAX_TEXT: Final = 200  # a search text longer than any name or code is cut to this
Transition = Literal["suspend", "reinstate"]


def keyset(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    """A page's cursor as its keyset, or the first page for a missing or forged one."""
    if not cursor:
        return None
    try:
        return decode_cursor(cursor, (datetime, uuid.UUID))
    except DataexError:
        return None


def page_link(path: str, filters: dict[str, Any], cursor: str | None = None) -> str:
    """``path`` with the filters that are set (and the cursor), properly encoded."""
    query = {k: v for k, v in filters.items() if v not in (None, "", False)}
    if cursor:
        query["cursor"] = cursor
    return path + (f"?{urlencode(query)}" if query else "")


def reason_of(form: Any) -> str:
    """The form's reason, as the API's `Reason` body requires it (1 to 2,000 characters)."""
    raw = form.get("reason")
    text = raw.strip() if isinstance(raw, str) else ""
    try:
        return msgspec.convert({"reason": text}, Reason).reason
    except msgspec.ValidationError as error:
        raise InvalidInput(
            f"a reason is required (1 to 2,000 characters): {error}",
            errors=[FieldError(path="reason", message=str(error), source="form")],
        ) from error


class ProductPages(Controller):
    path = f"{ROOT}/products"

    @get("/")
    async def search(
        self,
        request: Request[Any, Any, Any],
        listings: NamedDependency[ListingService],
        principal: NamedDependency[Principal],
        q: FromQuery[str | None] = None,
        state_name: Annotated[str | None, QueryParameter(name="state")] = None,
        cursor: FromQuery[str | None] = None,
    ) -> Template:
        text = q.strip()[:MAX_TEXT] if q and q.strip() else None
        chosen = next((s for s in STATES if s == state_name), None)
        after = keyset(cursor)
        rows = await listings.staff_search(
            principal, text=text, state=chosen, after=after, limit=PAGE
        )
        filters = {"q": text, "state": chosen}
        base = f"{ROOT}/products/"
        return render(
            request,
            "products.html",
            rows=rows,
            filters=filters,
            states=STATES,
            next_page=(
                page_link(base, filters, encode_cursor(rows[-1].created_at, rows[-1].id))
                if len(rows) == PAGE
                else None
            ),
            first_page=page_link(base, filters) if after else None,
        )

    @get("/{product_id:uuid}")
    async def product(
        self,
        request: Request[Any, Any, Any],
        product_id: FromPath[uuid.UUID],
        listings: NamedDependency[ListingService],
        principal: NamedDependency[Principal],
    ) -> Template:
        return await product_page(request, product_id, listings, principal)

    @post("/{product_id:uuid}/suspend")
    async def suspend(
        self,
        request: Request[Any, Any, Any],
        product_id: FromPath[uuid.UUID],
        listings: NamedDependency[ListingService],
        actor: NamedDependency[Actor],
        principal: NamedDependency[Principal],
    ) -> Response[Any]:
        return await _transition(request, product_id, listings, actor, principal, "suspend")

    @post("/{product_id:uuid}/reinstate")
    async def reinstate(
        self,
        request: Request[Any, Any, Any],
        product_id: FromPath[uuid.UUID],
        listings: NamedDependency[ListingService],
        actor: NamedDependency[Actor],
        principal: NamedDependency[Principal],
    ) -> Response[Any]:
        return await _transition(request, product_id, listings, actor, principal, "reinstate")


async def _transition(
    request: Request[Any, Any, Any],
    product_id: uuid.UUID,
    listings: ListingService,
    actor: Actor,
    principal: Principal,
    action: Transition,
) -> Response[Any]:
    """The API's own call (`ListingService.transition`), then back to the product's page."""
    form = await request.form()

    async def act() -> None:
        await listings.transition(actor, principal, product_id, action, reason_of(form))

    async def page(problem: DataexError) -> Template:
        return await product_page(
            request, product_id, listings, principal, problem=problem, form=form, action=action
        )

    return await attempt(request, act, then=f"{ROOT}/products/{product_id}", page=page)


async def product_page(
    request: Request[Any, Any, Any],
    product_id: uuid.UUID,
    listings: ListingService,
    principal: Principal,
    *,
    problem: DataexError | None = None,
    form: Any = None,
    action: Transition | None = None,
) -> Template:
    product: Product = await listings.get(principal, product_id)
    sellers = await organisation_names(listings.pool, [product.seller_org_id])
    history = await list_entries(
        listings.pool, limit=50, subject_type="product", subject_id=str(product_id)
    )
    objections = await ObjectionService(listings).find(
        state=None, after=None, limit=OBJECTIONS_SHOWN, product_id=product_id
    )
    shown = product.live or product.pending
    draft = product.draft or {}
    code = product.product_code
    return render(
        request,
        "product.html",
        status_code=problem.status if problem else 200,
        product=product,
        name_zh=shown.metadata.name_zh if shown else draft.get("name_zh"),
        name_en=shown.metadata.name_en if shown else draft.get("name_en"),
        seller_name=sellers.get(product.seller_org_id),
        revisions=[
            (kind, r) for kind, r in (("live", product.live), ("pending", product.pending)) if r
        ],
        certificate_url=(
            f"/v1/products/{product.id}/certificate" if product.state == "listed" and code else None
        ),
        status_url=f"/v1/certificates/{quote(code, safe='')}/status"
        if code and product.live
        else None,
        can_suspend=PRODUCT.allows(product.state, "suspend"),
        can_reinstate=PRODUCT.allows(product.state, "reinstate"),
        history=list(reversed(history)),  # oldest first
        objections=objections,
        objections_shown=OBJECTIONS_SHOWN,
        problem=problem,
        form=form or {},
        action=action,
    )
