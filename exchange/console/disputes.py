"""Disputes for staff (issue 21): the list (open ones, oldest first, the respondent's deadline
with an overdue badge), a dispute's page (parties, statements, deadlines, four-eyes progress,
its transitions, the resolution and the money it moved), the evidence viewer (every item, a
download and an inline preview of text and images), the resolution form (reviewers, as
``POST /v1/disputes/{id}/resolution``), the award form (admins, as ``POST …/award``; at or above
the four-eyes amount it shows the pending award, for a second admin to record the same one) and
the evidence bundle (as ``GET …/bundle``).

Evidence is served as an attachment with ``X-Content-Type-Options: nosniff`` and, unless it is
one of the accepted evidence types, as ``application/octet-stream``: never as a page of the
console's origin. Text previews are the first 64 KiB, escaped, in a ``<pre>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Final, TypeVar, get_args

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import File, Stream, Template

from exchange.console.i18n import Translator
from exchange.console.products import keyset, page_link
from exchange.console.review import age_class, age_text
from exchange.console.trades import money
from exchange.console.web import ROOT, SECURITY_HEADERS, render, see_other, session_of
from exchange.disputes.export import bundle_response
from exchange.disputes.schemas import (
    MEDIA_TYPES,
    AwardIn,
    Dispute,
    DisputeEvidenceItem,
    DisputeResolutionIn,
    Resolution,
    kind_of,
)
from exchange.disputes.service import DisputeService
from exchange.disputes.states import DISPUTE, OPEN
from exchange.identity.service import organisation_names
from exchange.platform.audit import Actor
from exchange.platform.auth import Principal, require_roles
from exchange.platform.errors import DataexError, FieldError, InvalidInput, NotFound
from exchange.platform.events import DisputeReason, DisputeState
from exchange.platform.paging import encode_cursor

_T = TypeVar("_T")
PAGE: Final = 50
STATES: Final[tuple[DisputeState, ...]] = get_args(DisputeState)
REASONS: Final[tuple[DisputeReason, ...]] = get_args(DisputeReason)
KINDS: Final = ("release_to_seller", "refund_buyer", "split", "redeliver", "extend_acceptance")
# The roles of ``POST /v1/disputes/{id}/resolution`` and of ``POST …/award``.
RESOLVE_ROLES: Final = ("reviewer",)
AWARD_ROLES: Final = ("admin",)
# The list's state filter: the open ones (the default), any state, or one state.
OPEN_FILTER: Final = "open"
ANY_FILTER: Final = "any"
# What a redirect after a form may say on the page (a flash carried in the address).
DONE: Final = ("resolved", "pending", "awarded", "award_pending")
PREVIEW_BYTES: Final = 64 * 1024
TEXT_TYPES: Final = frozenset(
    {"text/plain", "text/csv", "application/json", "application/jsonl", "application/x-ndjson"}
)
IMAGE_TYPES: Final = frozenset({"image/png", "image/jpeg"})
# Evidence served with its own media type (the accepted upload types and the exchange's JSON
# lines); anything else as bytes.
SERVED_TYPES: Final = MEDIA_TYPES | {"application/jsonl"}


@dataclass(frozen=True, slots=True)
class Preview:
    """An item's inline preview: ``text`` (its first bytes, decoded) or an image."""

    image: bool = False
    text: str | None = None
    truncated: bool = False


def until_text(t: Translator, due: datetime, now: datetime) -> str:
    """``due`` from ``now``: the time left, or how long ago it passed."""
    if due > now:
        return t("disputes.remaining", left=age_text(t, now, due))
    return t("disputes.overdue_by", late=age_text(t, due, now))


def describe(t: Translator, resolution: Resolution) -> str:
    """A resolution in the reader's words (its kind and what it names)."""
    raw = msgspec.to_builtins(resolution)
    kind = raw["kind"]
    if kind == "split":
        return t("disputes.describe.split", refund=money(t, raw["refund_fen"]))
    if kind == "redeliver":
        return t("disputes.describe.redeliver", by=resolution_time(raw["by"]))
    if kind == "extend_acceptance":
        return t("disputes.describe.extend_acceptance", days=raw["days"])
    return t(f"disputes.kind.{kind}")


def resolution_time(value: str) -> str:
    return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


def _invalid(path: str, message: str) -> InvalidInput:
    return InvalidInput(message, errors=[FieldError(path=path, message=message, source="form")])


def _resolution_of(form: Any) -> dict[str, Any]:
    """The form's resolution as the API's JSON (``kind`` and its one field)."""
    kind = _text(form.get("kind"))
    raw: dict[str, Any] = {"kind": kind}
    if kind == "split":
        raw["refund_fen"] = _whole(form.get("refund_fen"), "resolution.refund_fen")
    elif kind == "redeliver":
        raw["by"] = _utc(form.get("by"), "resolution.by")
    elif kind == "extend_acceptance":
        raw["days"] = _whole(form.get("days"), "resolution.days")
    return raw


def _whole(value: Any, path: str) -> int:
    text = _text(value).replace(",", "")
    if not text.lstrip("-").isdigit():
        raise _invalid(path, "a whole number is needed")
    return int(text)


def _utc(value: Any, path: str) -> str:
    """A datetime-local input's ``YYYY-MM-DDTHH:MM[:SS]`` (UTC), or RFC 3339 with an offset."""
    text = _text(value)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise _invalid(path, "a date and time is needed (YYYY-MM-DDTHH:MM, UTC)") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).isoformat()


def _convert(raw: dict[str, Any], into: type[_T], what: str) -> _T:
    try:
        return msgspec.convert(raw, into)
    except msgspec.ValidationError as error:
        path = str(error).rpartition("at `$")[2].rstrip("`").lstrip(".") or "form"
        raise InvalidInput(
            f"the {what} form is incomplete or invalid: {error}",
            errors=[FieldError(path=path, message=str(error), source="form")],
        ) from error


def resolution_request(form: Any) -> DisputeResolutionIn:
    """The resolution form as the API's `DisputeResolutionIn`, validated as the API does."""
    raw = {"resolution": _resolution_of(form), "note": _text(form.get("note"))}
    return _convert(raw, DisputeResolutionIn, "resolution")


def award_request(form: Any) -> AwardIn:
    """The award form as the API's `AwardIn`, validated as the API does."""
    raw = {
        "resolution": _resolution_of(form),
        "document_sha256": _text(form.get("document_sha256")).lower(),
        "note": _text(form.get("note")),
    }
    return _convert(raw, AwardIn, "award")


def form_of(resolution: Resolution) -> dict[str, str]:
    """A resolution as the form's fields (the pending proposal, prefilled for the second
    reviewer: submitted unchanged, it is the same resolution and so the same digest)."""
    raw = msgspec.to_builtins(resolution)
    fields = {"kind": str(raw["kind"])}
    if "refund_fen" in raw:
        fields["refund_fen"] = str(raw["refund_fen"])
    if "days" in raw:
        fields["days"] = str(raw["days"])
    if "by" in raw:
        by = datetime.fromisoformat(raw["by"]).astimezone(UTC)
        fields["by"] = by.replace(tzinfo=None).isoformat(timespec="seconds")
    return fields


def _read_head(path: Path) -> bytes:
    with path.open("rb") as source:
        return source.read(PREVIEW_BYTES + 1)


def _shown(head: bytes, media_type: str) -> Preview:
    truncated = len(head) > PREVIEW_BYTES
    text = head[:PREVIEW_BYTES].decode("utf-8", errors="replace")
    if media_type == "application/json" and not truncated:
        with contextlib.suppress(ValueError):  # a whole JSON document, indented
            text = json.dumps(json.loads(text), ensure_ascii=False, indent=2)
    return Preview(text=text, truncated=truncated)


async def previews(
    disputes: DisputeService, principal: Principal, dispute_id: uuid.UUID,
    items: list[DisputeEvidenceItem],
) -> dict[str, Preview]:  # fmt: skip
    """Inline previews by SHA-256: text (the first 64 KiB) and images (shown from the
    download route); other types have none."""
    shown: dict[str, Preview] = {}
    for item in items:
        if item.media_type in IMAGE_TYPES:
            shown[item.sha256] = Preview(image=True)
        elif item.media_type in TEXT_TYPES:
            _, path = await disputes.evidence_file(principal, dispute_id, item.sha256)
            try:
                head = await asyncio.to_thread(_read_head, path)
            except FileNotFoundError:
                continue
            shown[item.sha256] = _shown(head, item.media_type)
    return shown


@dataclass(frozen=True, slots=True)
class DisputeCase:
    """A dispute's page and its forms, with who asks: the one dependency (``case``) of the
    handlers of ``/console/disputes/{dispute_id}`` and its form posts."""

    request: Request[Any, Any, Any]
    dispute_id: uuid.UUID
    disputes: DisputeService
    actor: Actor
    principal: Principal

    async def page(
        self, *, problem: DataexError | None = None, form: Any = None, formed: str | None = None,
        done: str | None = None,
    ) -> Template:  # fmt: skip
        return await dispute_page(
            self.request, self.dispute_id, self.disputes, self.principal, problem=problem,
            form=form, formed=formed, done=done,
        )  # fmt: skip

    async def submit(
        self, formed: str, roles: tuple[str, ...], action: Callable[[Any], Awaitable[str]]
    ) -> Response[Any]:
        """A form of the page (``formed``), for ``roles``: the API's own call (``action``, given
        the form), then 303 back to the page saying what it did (its answer, one of `DONE`);
        on a problem, the page again with the problem's text and the form as it was sent. The
        CSRF token was checked by `console_guard`."""
        form = await self.request.form()
        try:
            require_roles(self.principal, roles)
            done = await action(form)
        except DataexError as problem:
            return await self.page(problem=problem, form=form, formed=formed)
        return see_other(f"{ROOT}/disputes/{self.dispute_id}?done={done}")


def dispute_case(
    request: Request[Any, Any, Any],
    dispute_id: FromPath[uuid.UUID],
    disputes: NamedDependency[DisputeService],
    actor: NamedDependency[Actor],
    principal: NamedDependency[Principal],
) -> DisputeCase:
    return DisputeCase(request, dispute_id, disputes, actor, principal)


class DisputePages(Controller):
    path = f"{ROOT}/disputes"
    dependencies = {"case": Provide(dispute_case, sync_to_thread=False)}

    @get("/")
    async def dispute_list(
        self,
        request: Request[Any, Any, Any],
        disputes: NamedDependency[DisputeService],
        principal: NamedDependency[Principal],
        state_name: Annotated[str | None, QueryParameter(name="state")] = None,
        reason: FromQuery[str | None] = None,
        trade: FromQuery[str | None] = None,
        cursor: FromQuery[str | None] = None,
    ) -> Template:
        chosen = state_name if state_name in (*STATES, ANY_FILTER) else OPEN_FILTER
        states: frozenset[str] | None = (
            OPEN if chosen == OPEN_FILTER else None if chosen == ANY_FILTER else frozenset({chosen})
        )
        reason = reason if reason in REASONS else None
        try:
            trade_id = uuid.UUID(trade) if trade else None
        except ValueError:
            trade_id = None
        after = keyset(cursor)
        items = await disputes.oldest(
            principal, states=states, reason=reason, trade_id=trade_id, after=after,
            limit=PAGE + 1,
        )  # fmt: skip
        more = len(items) > PAGE
        items = items[:PAGE]
        now = disputes.clock.now()
        names = await organisation_names(
            disputes.pool, [o for d in items for o in (d.buyer_org_id, d.seller_org_id)]
        )
        filters = {
            "state": None if chosen == OPEN_FILTER else chosen,
            "reason": reason,
            "trade": trade_id,
        }
        base = f"{ROOT}/disputes/"
        return render(
            request,
            "disputes.html",
            disputes=items,
            names=names,
            chosen=chosen,
            filters=filters,
            states=STATES,
            reasons=REASONS,
            money=money,
            now=now,
            overdue=lambda d: d.state == "awaiting_response" and d.respond_by <= now,
            until=lambda t, due: until_text(t, due, now),
            age_class=lambda d: age_class(d.opened_at, now),
            age_text=lambda t, d: age_text(t, d.opened_at, now),
            next_page=(
                page_link(base, filters, encode_cursor(items[-1].opened_at, items[-1].id))
                if more
                else None
            ),
            first_page=page_link(base, filters) if after else None,
        )

    @get("/{dispute_id:uuid}")
    async def dispute(
        self, case: NamedDependency[DisputeCase], done: FromQuery[str | None] = None
    ) -> Template:
        return await case.page(done=done if done in DONE else None)

    @get("/{dispute_id:uuid}/evidence/{sha256:str}")
    async def evidence_file(
        self,
        dispute_id: FromPath[uuid.UUID],
        sha256: FromPath[str],
        disputes: NamedDependency[DisputeService],
        principal: NamedDependency[Principal],
    ) -> File:
        """An item's bytes, as ``GET /v1/disputes/{id}/evidence/{sha256}`` gives them to its
        parties and staff: always an attachment, never sniffed; images are also shown in the
        page from here (an ``<img>`` ignores the attachment)."""
        if len(sha256) != 64:
            raise NotFound(f"dispute {dispute_id} has no evidence item {sha256[:64]}")
        item, path = await disputes.evidence_file(principal, dispute_id, sha256)
        return File(
            path,
            filename=item.name,
            media_type=item.media_type if item.media_type in SERVED_TYPES else None,
            content_disposition_type="attachment",
            etag=None,
            headers=SECURITY_HEADERS,
        )

    @get("/{dispute_id:uuid}/bundle")
    async def bundle(
        self,
        dispute_id: FromPath[uuid.UUID],
        disputes: NamedDependency[DisputeService],
        principal: NamedDependency[Principal],
    ) -> Stream:
        """The evidence bundle, as ``GET /v1/disputes/{id}/bundle`` gives it (a browser's link
        cannot carry the bearer token, so the console serves it), streamed as it does."""
        return bundle_response(await disputes.bundle(principal, dispute_id), SECURITY_HEADERS)

    @post("/{dispute_id:uuid}/resolution")
    async def resolve(self, case: NamedDependency[DisputeCase]) -> Response[Any]:
        async def act(form: Any) -> str:
            data = resolution_request(form)
            _, resolved = await case.disputes.resolve(
                case.actor, case.principal, case.dispute_id, data.resolution, data.note
            )
            return "resolved" if resolved else "pending"

        return await case.submit("resolution", RESOLVE_ROLES, act)

    @post("/{dispute_id:uuid}/award")
    async def award(self, case: NamedDependency[DisputeCase]) -> Response[Any]:
        async def act(form: Any) -> str:
            data = award_request(form)
            _, recorded = await case.disputes.award(
                case.actor, case.principal, case.dispute_id, data.resolution,
                data.document_sha256, data.note,
            )  # fmt: skip
            return "awarded" if recorded else "award_pending"

        return await case.submit("award", AWARD_ROLES, act)


async def dispute_page(
    request: Request[Any, Any, Any],
    dispute_id: uuid.UUID,
    disputes: DisputeService,
    principal: Principal,
    *,
    problem: DataexError | None = None,
    form: Any = None,
    formed: str | None = None,
    done: str | None = None,
) -> Template:
    """The dispute from its room: the case, its evidence (with previews), its transitions."""
    dispute: Dispute = await disputes.get(principal, dispute_id)
    evidence = await disputes.evidence(principal, dispute_id)
    steps = await disputes.transitions(principal, dispute_id)
    shown = await previews(disputes, principal, dispute_id, evidence.items)
    names = await organisation_names(disputes.pool, [dispute.buyer_org_id, dispute.seller_org_id])
    now = disputes.clock.now()
    session = session_of(request)
    may_resolve = principal.has(*RESOLVE_ROLES) and DISPUTE.allows(dispute.state, "resolve")
    may_award = principal.has(*AWARD_ROLES) and DISPUTE.allows(dispute.state, "record_award")
    # The proposal waiting for a second reviewer (under review) or a second admin (escalated).
    pending = dispute.pending
    review_pending = pending if pending is not None and pending.stage == "review" else None
    award_pending = pending if pending is not None and pending.stage == "award" else None
    # The form's values: what was sent (a refused form), else the pending proposal for the
    # second reviewer (or admin) to approve as it is.
    resolution_form: dict[str, Any] = {}
    award_form: dict[str, Any] = {}
    if form is not None and formed == "resolution":
        resolution_form = dict(form)
    elif form is not None and formed == "award":
        award_form = dict(form)
    if not resolution_form and review_pending is not None:
        resolution_form = form_of(review_pending.resolution)
    if not award_form and award_pending is not None:
        award_form = form_of(award_pending.resolution) | {
            "document_sha256": award_pending.document_sha256
        }
    approvals = (
        dispute.approvals_needed
        if dispute.resolution is not None
        else (1 if review_pending is not None else 0)
    )
    awarded = dispute.escalation is not None and dispute.escalation.award_sha256 is not None
    me = _label(session.principal)
    return render(
        request,
        "dispute.html",
        status_code=problem.status if problem else 200,
        problem=problem,
        dispute=dispute,
        evidence=evidence,
        previews=shown,
        steps=steps,
        names=names,
        now=now,
        until=lambda t, due: until_text(t, due, now),
        respondent="seller" if dispute.claimant == "buyer" else "buyer",
        respond_overdue=dispute.state == "awaiting_response" and dispute.respond_by <= now,
        acceptance_passed=dispute.acceptance_due <= now,
        money=money,
        describe=describe,
        kind_of=kind_of,
        approvals=approvals,
        award_approvals=dispute.approvals_needed if awarded else (1 if award_pending else 0),
        may_resolve=may_resolve,
        may_award=may_award,
        reviewer=principal.has(*RESOLVE_ROLES),
        review_pending=review_pending,
        award_pending=award_pending,
        proposed_by_me=review_pending is not None and review_pending.proposed_by == me,
        award_proposed_by_me=award_pending is not None and award_pending.proposed_by == me,
        award_items=[i for i in evidence.items if i.kind == "award"],
        kinds=KINDS,
        resolution_form=resolution_form,
        award_form=award_form,
        done=done,
    )


def _label(principal: Principal) -> str:
    """The actor label the service records for this staff member (its approvals' reviewer)."""
    return Actor.of(principal, None).label
