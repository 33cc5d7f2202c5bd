"""The review queue and a case's page: claim, release and decide, as ``/v1/reviews`` does."""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery
from litestar.response import Template

from contracts.orders.service import OrderService
from exchange.console.web import ROOT, attempt, render, safe_next, session_of
from exchange.listings.lifecycle import changed_fields
from exchange.listings.schemas import ProductMetadata
from exchange.listings.service import ListingService, fetch_revision
from exchange.platform.audit import Actor
from exchange.platform.audit.repository import list_entries
from exchange.platform.auth import Principal
from exchange.platform.errors import DataexError, FieldError, InvalidInput
from exchange.platform.paging import decode_cursor, encode_cursor
from exchange.review.schemas import CaseKind, DecisionCreate, ReviewCase
from exchange.review.service import ReviewService

PAGE: Final = 50
KINDS: Final[tuple[CaseKind, ...]] = ("listing", "order", "legal_prohibition", "exporter_status")
AGE_FILTERS: Final = (24, 72, 168)  # hours: "older than a day, three days, a week"
VERDICTS: Final = ("approve", "request_changes", "reject")


@dataclass(frozen=True, slots=True)
class FieldRow:
    """One field of a listing under review: its live value, its proposed one, and whether the
    revision changes it (the row is highlighted)."""

    name: str
    live: str | None
    proposed: str
    changed: bool


def age_class(opened_at: datetime, now: datetime) -> str:
    age = now - opened_at
    if age >= timedelta(days=3):
        return "overdue"
    if age >= timedelta(days=1):
        return "ageing"
    return "fresh"


def age_text(t: Any, opened_at: datetime, now: datetime) -> str:
    minutes = max(0, int((now - opened_at).total_seconds() // 60))
    if minutes < 60:
        return str(t("age.minutes", n=minutes))
    if minutes < 48 * 60:
        return str(t("age.hours", n=minutes // 60))
    return str(t("age.days", n=minutes // (24 * 60)))


def _approvals(case: ReviewCase) -> int:
    return sum(d.verdict == "approve" for d in case.decisions)


def _compact(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))


def field_rows(live: ProductMetadata | None, proposed: ProductMetadata) -> list[FieldRow]:
    """Every field of the proposed revision (``manual`` by its parts, as `changed_fields`
    names them), with the live value beside it; ``changed`` exactly where they differ."""
    changed = set(changed_fields(live, proposed)) if live is not None else set()
    new = msgspec.to_builtins(proposed)
    old = msgspec.to_builtins(live) if live is not None else {}
    rows: list[FieldRow] = []
    for key in sorted(set(new) | set(old)):
        if key == "manual":
            parts_new, parts_old = new.get(key, {}), old.get(key, {})
            for part in sorted(set(parts_new) | set(parts_old)):
                name = f"manual.{part}"
                rows.append(
                    FieldRow(
                        name=name,
                        live=_compact(parts_old[part]) if part in parts_old else None,
                        proposed=_compact(parts_new.get(part, "")),
                        changed=name in changed,
                    )
                )
            continue
        rows.append(
            FieldRow(
                name=key,
                live=_compact(old[key]) if key in old else None,
                proposed=_compact(new.get(key, "")),
                changed=key in changed,
            )
        )
    return rows


class ReviewPages(Controller):
    path = f"{ROOT}/reviews"

    @get("/")
    async def queue(
        self,
        request: Request[Any, Any, Any],
        reviews: NamedDependency[ReviewService],
        kind: FromQuery[str | None] = None,
        rule: FromQuery[str | None] = None,
        older_than: FromQuery[int | None] = None,
        mine: FromQuery[bool] = False,
        cursor: FromQuery[str | None] = None,
    ) -> Template:
        session = session_of(request)
        now = reviews.clock.now()
        kind = kind if kind in KINDS else None
        rule = rule.strip().upper()[:16] if rule and rule.strip() else None
        older_than = older_than if older_than in AGE_FILTERS else None
        after = _cursor(cursor)
        items = await reviews.queue(
            kind=kind,
            state="open",
            rule=rule,
            opened_before=now - timedelta(hours=older_than) if older_than else None,
            after=after,
            limit=PAGE + 1,  # one more: is there a next page at all?
            claimed_by=session.principal.token_id if mine else None,
        )
        more = len(items) > PAGE
        items = items[:PAGE]
        next_cursor = encode_cursor(items[-1].opened_at, items[-1].id) if more else None
        filters = {"kind": kind, "rule": rule, "older_than": older_than, "mine": mine}
        query = "&".join(f"{k}={v}" for k, v in filters.items() if v not in (None, False))
        return render(
            request,
            "queue.html",
            cases=items,
            filters=filters,
            kinds=KINDS,
            age_filters=AGE_FILTERS,
            next_page=(
                f"{ROOT}/reviews/?{query + '&' if query else ''}cursor={next_cursor}"
                if next_cursor
                else None
            ),
            first_page=f"{ROOT}/reviews/" + (f"?{query}" if query else "") if after else None,
            age_class=lambda c: age_class(c.opened_at, now),
            age_text=lambda t, c: age_text(t, c.opened_at, now),
            approvals=_approvals,
            me=session.principal.token_id,
        )

    @get("/{case_id:uuid}")
    async def case(
        self,
        request: Request[Any, Any, Any],
        case_id: FromPath[uuid.UUID],
        reviews: NamedDependency[ReviewService],
        listings: NamedDependency[ListingService],
        orders: NamedDependency[OrderService],
    ) -> Template:
        return await _case_page(request, case_id, reviews, listings, orders)

    @post("/{case_id:uuid}/claim")
    async def claim(
        self,
        request: Request[Any, Any, Any],
        case_id: FromPath[uuid.UUID],
        reviews: NamedDependency[ReviewService],
        listings: NamedDependency[ListingService],
        orders: NamedDependency[OrderService],
        actor: NamedDependency[Actor],
        principal: NamedDependency[Principal],
    ) -> Response[Any]:
        return await self._act(
            request, case_id, reviews, listings, orders,
            lambda _form: reviews.claim(actor, principal, case_id),
        )  # fmt: skip

    @post("/{case_id:uuid}/release")
    async def release(
        self,
        request: Request[Any, Any, Any],
        case_id: FromPath[uuid.UUID],
        reviews: NamedDependency[ReviewService],
        listings: NamedDependency[ListingService],
        orders: NamedDependency[OrderService],
        actor: NamedDependency[Actor],
        principal: NamedDependency[Principal],
    ) -> Response[Any]:
        return await self._act(
            request, case_id, reviews, listings, orders,
            lambda _form: reviews.release(actor, principal, case_id),
        )  # fmt: skip

    @post("/{case_id:uuid}/decide")
    async def decide(
        self,
        request: Request[Any, Any, Any],
        case_id: FromPath[uuid.UUID],
        reviews: NamedDependency[ReviewService],
        listings: NamedDependency[ListingService],
        orders: NamedDependency[OrderService],
        actor: NamedDependency[Actor],
        principal: NamedDependency[Principal],
    ) -> Response[Any]:
        return await self._act(
            request, case_id, reviews, listings, orders,
            lambda form: reviews.decide(actor, principal, case_id, decision_of(form)),
        )  # fmt: skip

    @staticmethod
    async def _act(
        request: Request[Any, Any, Any],
        case_id: uuid.UUID,
        reviews: ReviewService,
        listings: ListingService,
        orders: OrderService,
        action: Callable[[Any], Awaitable[Any]],
    ) -> Response[Any]:
        """The review service's call with the form sent; then back where the form says (the
        case's page by default), or on a problem, the case's page again with it."""
        form = await request.form()
        back = safe_next(form.get("next") if isinstance(form.get("next"), str) else None)
        if back == f"{ROOT}/":
            back = f"{ROOT}/reviews/{case_id}"

        async def page(problem: DataexError) -> Template:
            return await _case_page(
                request, case_id, reviews, listings, orders, problem=problem, form=form
            )

        return await attempt(request, lambda: action(form), then=back, page=page)


def decision_of(form: Any) -> DecisionCreate:
    """The decision form as the API's `DecisionCreate`, validated as the API validates it."""
    verdict = form.get("verdict")
    evidence = []
    if verdict == "approve":
        for key in form:
            if key.startswith("evidence.") and key.endswith(".reference"):
                rule = key.split(".")[1]
                reference = (form.get(key) or "").strip()
                digest = (form.get(f"evidence.{rule}.sha256") or "").strip().lower()
                if reference:
                    evidence.append(
                        {"rule": rule, "reference": reference, "sha256": digest or None}
                    )
    raw = {"verdict": verdict, "reason": (form.get("reason") or "").strip(), "evidence": evidence}
    try:
        return msgspec.convert(raw, DecisionCreate)
    except msgspec.ValidationError as error:
        path = str(error).rpartition("at `$")[2].rstrip("`") or ""
        field = path.lstrip(".") or "form"
        raise InvalidInput(
            f"the decision form is incomplete or invalid: {error}",
            errors=[FieldError(path=field, message=str(error), source="form")],
        ) from error


def _cursor(cursor: str | None) -> tuple[datetime, uuid.UUID] | None:
    if not cursor:
        return None
    try:
        return decode_cursor(cursor, (datetime, uuid.UUID))
    except DataexError:
        return None


async def _case_page(
    request: Request[Any, Any, Any],
    case_id: uuid.UUID,
    reviews: ReviewService,
    listings: ListingService,
    orders: OrderService,
    *,
    problem: DataexError | None = None,
    form: Any = None,
) -> Template:
    session = session_of(request)
    principal = session.principal
    case = await reviews.get(case_id)
    now = reviews.clock.now()
    product = order = None
    rows: list[FieldRow] = []
    list_version = None
    revision_number = None
    if case.kind in ("listing", "legal_prohibition"):
        product = await listings.get(principal, case.subject_id)
        if case.kind == "listing":
            list_version = product.policy.list_version if product.policy else None
            revision_number = case.revision
            if case.revision is not None:
                proposed = await fetch_revision(listings.pool, case.subject_id, case.revision)
                live = product.live
                live_meta = (
                    live.metadata if live is not None and live.number != case.revision else None
                )
                rows = field_rows(live_meta, proposed.metadata)
    elif case.kind == "order":
        order = await orders.get(principal, case.subject_id)
        list_version = order.policy.list_version
    history = await list_entries(
        reviews.pool, limit=100, subject_type="review_case", subject_id=str(case.id)
    )
    approvals = _approvals(case)
    decided_by_me = any(d.reviewer == principal.token_id for d in case.decisions)
    claimed_by_me = case.claimed_by == principal.token_id
    cautious = [hit for hit in case.hits if hit.get("list") == "cautious"]
    return render(
        request,
        "case.html",
        status_code=problem.status if problem else 200,
        case=case,
        product=product,
        order=order,
        rows=rows,
        changed=[row.name for row in rows if row.changed],
        has_live=any(row.live is not None for row in rows),
        list_version=list_version,
        revision_number=revision_number,
        approvals=approvals,
        decided_by_me=decided_by_me,
        claimed_by_me=claimed_by_me,
        can_claim=case.state == "open" and not claimed_by_me and not decided_by_me,
        can_decide=case.state == "open" and claimed_by_me,
        cautious=cautious,
        verdicts=VERDICTS,
        history=list(reversed(history)),
        age=age_text,
        age_class=age_class(case.opened_at, now),
        now=now,
        problem=problem,
        form=form or {},
        me=principal.token_id,
    )
