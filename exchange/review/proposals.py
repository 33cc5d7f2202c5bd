"""Staff proposals about an organisation as a data exporter, decided with four eyes.

What the cross-border route needs to know of a seller beyond its counts (policy-rules.md, route
steps 2 and 3): whether it is a critical information infrastructure operator, an exemption
that applies to its exports, a free-trade-zone exemption. Staff (a reviewer or an admin)
propose a status with the reason and the document it rests on; it is recorded when two
distinct reviewers have approved the case, and each order's evaluation reads it from then on.

The identity room owns organisations and writes the status (`record_exporter_status`); the
review room decides it, as it decides listings and orders. (A product's legal prohibition is
proposed through the listing room, which owns products, and decided the same way.)
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

import asyncpg
import msgspec
from msgspec import Meta, Struct

from exchange.identity import repository as identity_repo
from exchange.identity.schemas import ExporterStatus, ExportExemption
from exchange.identity.service import record_exporter_status
from exchange.platform.audit import Actor, record
from exchange.platform.auth import STAFF_ROLES
from exchange.platform.clock import Clock
from exchange.platform.db import Connection
from exchange.platform.errors import Conflict, NotFound
from exchange.review.schemas import ReviewCase
from exchange.review.service import open_proposal

# The policy rule a status bears on: the route it changes decides CAU-05.
EXPORTER_RULES = ["CAU-05"]


class ExporterStatusProposal(Struct, forbid_unknown_fields=True, frozen=True):
    """A status to record, whole, and why."""

    ciio: bool
    exemption: ExportExemption | None
    ftz_exempt: bool
    reason: Annotated[str, Meta(min_length=1, max_length=4000)]
    reference: Annotated[
        str,
        Meta(min_length=1, max_length=500,
             description="the document it rests on: a CIIO designation, an exemption's basis"),
    ]  # fmt: skip


class ExporterStatusDesk:
    def __init__(self, pool: asyncpg.Pool, clock: Clock) -> None:
        self.pool = pool
        self.clock = clock

    async def propose(
        self, actor: Actor, org_id: uuid.UUID, data: ExporterStatusProposal
    ) -> ReviewCase:
        """Open the four-eyes case; 404 for an unknown organisation, 409 for exchange staff
        (they export nothing) or while another proposal for it is open."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            organisation = await identity_repo.get_organisation(conn, org_id, for_update=True)
            if organisation is None:
                raise NotFound(f"no organisation {org_id}")
            if set(organisation.roles) & STAFF_ROLES:
                raise Conflict(
                    f"organisation {org_id} is exchange staff; only market participants export data"
                )
            proposal = msgspec.to_builtins(data)
            case = await open_proposal(
                conn, kind="exporter_status", subject_id=org_id, subject_org_id=org_id,
                rules=EXPORTER_RULES, proposal=proposal, at=now,
            )  # fmt: skip
            await record(
                conn, actor, at=now, action="organisation.exporter_status_proposed",
                subject_type="organisation", subject_id=org_id,
                detail={"case_id": str(case.id), **proposal},
            )  # fmt: skip
        return case


async def on_exporter_status_decided(
    conn: Connection, case: ReviewCase, verdict: str, actor: Actor, at: datetime
) -> None:
    """The review queue's handler for exporter-status cases: approved, the status is recorded."""
    if verdict != "approve" or case.proposal is None:
        return
    proposal = msgspec.convert(case.proposal, ExporterStatusProposal)
    status = ExporterStatus(
        ciio=proposal.ciio, exemption=proposal.exemption, ftz_exempt=proposal.ftz_exempt
    )
    await record_exporter_status(
        conn, actor, case.subject_id, status, at,
        {"case_id": str(case.id), "reason": proposal.reason, "reference": proposal.reference},
    )  # fmt: skip
