"""HTTP routes of the review queue (role ``reviewer``), and staff proposals of an organisation's
status as a data exporter, which the queue decides."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Annotated

from litestar import Controller, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody, QueryParameter

from exchange.platform.audit import Actor
from exchange.platform.auth import Principal, requires
from exchange.platform.context import Platform
from exchange.platform.paging import DEFAULT_PAGE, check_limit, decode_cursor, encode_cursor
from exchange.review.proposals import ExporterStatusDesk, ExporterStatusProposal
from exchange.review.schemas import DecisionCreate, ReviewCase, ReviewCasePage
from exchange.review.service import ReviewService

Reviews = NamedDependency[ReviewService]


class ReviewController(Controller):
    path = "/v1/reviews"
    tags = ["reviews"]
    opt = requires("reviewer")

    @get("/", operation_id="listReviewCases", opt=requires("reviewer"))
    async def queue(
        self,
        reviews: Reviews,
        kind: Annotated[
            str | None,
            QueryParameter(description="listing, order, legal_prohibition or exporter_status"),
        ] = None,
        case_state: Annotated[
            str | None, QueryParameter(name="state", description="open (default), approved, …")
        ] = "open",
        rule: Annotated[str | None, QueryParameter(description="cases with this hit")] = None,
        older_than_hours: Annotated[int | None, QueryParameter(ge=0, le=24 * 366 * 100)] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = DEFAULT_PAGE,
        cursor: Annotated[str | None, QueryParameter()] = None,
        claimed_by: Annotated[
            uuid.UUID | None, QueryParameter(description="cases claimed by this reviewer token")
        ] = None,
    ) -> ReviewCasePage:
        """Oldest first."""
        after = decode_cursor(cursor, (datetime, uuid.UUID)) if cursor else None
        before = (
            reviews.clock.now() - timedelta(hours=older_than_hours)
            if older_than_hours is not None
            else None
        )
        items = await reviews.queue(
            kind=kind,
            state=case_state,
            rule=rule,
            opened_before=before,
            after=after,
            limit=check_limit(limit),
            claimed_by=claimed_by,
        )
        cursor_out = (
            encode_cursor(items[-1].opened_at, items[-1].id) if len(items) == limit else None
        )
        return ReviewCasePage(items=items, next_cursor=cursor_out)

    @get("/{case_id:uuid}", operation_id="getReviewCase", opt=requires("reviewer"))
    async def get_case(self, case_id: FromPath[uuid.UUID], reviews: Reviews) -> ReviewCase:
        return await reviews.get(case_id)

    @post(
        "/{case_id:uuid}/claim",
        operation_id="claimReviewCase",
        opt=requires("reviewer"),
        status_code=200,
    )
    async def claim(
        self,
        case_id: FromPath[uuid.UUID],
        reviews: Reviews,
        actor: NamedDependency[Actor],
        principal: NamedDependency[Principal],
    ) -> ReviewCase:
        return await reviews.claim(actor, principal, case_id)

    @post(
        "/{case_id:uuid}/release",
        operation_id="releaseReviewCase",
        opt=requires("reviewer"),
        status_code=200,
    )
    async def release(
        self,
        case_id: FromPath[uuid.UUID],
        reviews: Reviews,
        actor: NamedDependency[Actor],
        principal: NamedDependency[Principal],
    ) -> ReviewCase:
        """Give back a case this reviewer claimed, so another may take it."""
        return await reviews.release(actor, principal, case_id)

    @post(
        "/{case_id:uuid}/decisions",
        operation_id="decideReviewCase",
        opt=requires("reviewer"),
        status_code=200,
    )
    async def decide(
        self,
        case_id: FromPath[uuid.UUID],
        data: JSONBody[DecisionCreate],
        reviews: Reviews,
        actor: NamedDependency[Actor],
        principal: NamedDependency[Principal],
    ) -> ReviewCase:
        """approve (with evidence for every cautious hit), request_changes or reject, with a
        reason. Final and audited."""
        return await reviews.decide(actor, principal, case_id, data)


def provide_exporter_desk(platform: NamedDependency[Platform]) -> ExporterStatusDesk:
    return ExporterStatusDesk(platform.pool, platform.clock)


class ExporterStatusController(Controller):
    """Staff propose an organisation's status as a data exporter; two reviewers decide it in
    the queue above (the identity room, which owns organisations, records it)."""

    path = "/v1/organisations"
    tags = ["organisations"]
    dependencies = {"exporters": Provide(provide_exporter_desk, sync_to_thread=False)}

    @post(
        "/{org_id:uuid}/exporter-status",
        operation_id="proposeExporterStatus",
        opt=requires("reviewer", "admin"),
        status_code=201,
    )
    async def propose(
        self,
        org_id: FromPath[uuid.UUID],
        data: JSONBody[ExporterStatusProposal],
        exporters: NamedDependency[ExporterStatusDesk],
        actor: NamedDependency[Actor],
    ) -> ReviewCase:
        """Propose the organisation's whole exporter status (critical information
        infrastructure operator, exemption, free-trade-zone exemption) with the reason and the
        document it rests on. Opens a four-eyes review case (kind ``exporter_status``); the
        status is recorded, and orders routed by it, once two reviewers approve. 409 while
        another proposal for the organisation is open."""
        return await exporters.propose(actor, org_id, data)
