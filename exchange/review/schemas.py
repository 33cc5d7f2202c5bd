from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from exchange.review.states import CaseState

Verdict = Literal["approve", "request_changes", "reject"]
# What a case decides: a listing (its revision's hits), an order (its hits), or a staff
# proposal (a product's legal prohibition, an organisation's status as a data exporter).
CaseKind = Literal["listing", "order", "legal_prohibition", "exporter_status"]
PROPOSAL_KINDS: tuple[CaseKind, ...] = ("legal_prohibition", "exporter_status")


class EvidenceGiven(Struct, forbid_unknown_fields=True, frozen=True):
    """The evidence that satisfies one cautious hit."""

    rule: Annotated[str, Meta(pattern=r"^[A-Z]{3}-\d{2,3}$")]
    reference: Annotated[str, Meta(min_length=1, max_length=500)]
    sha256: Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")] | None = None


class DecisionCreate(Struct, forbid_unknown_fields=True):
    verdict: Verdict
    reason: Annotated[str, Meta(min_length=1, max_length=4000)]
    evidence: list[EvidenceGiven] = []


class ReviewDecision(Struct, frozen=True):
    reviewer: uuid.UUID
    verdict: Verdict
    reason: str
    evidence: list[EvidenceGiven]
    decided_at: datetime


class ReviewCase(Struct, frozen=True):
    id: uuid.UUID
    kind: CaseKind
    subject_id: uuid.UUID
    subject_org_id: uuid.UUID
    revision: int | None
    state: CaseState
    rules: list[str]
    hits: list[dict[str, Any]]
    four_eyes: bool
    approvals_needed: int
    claimed_by: uuid.UUID | None
    opened_at: datetime
    closed_at: datetime | None
    decisions: list[ReviewDecision]
    # A staff proposal's case: what is proposed (applied when the case is approved).
    proposal: dict[str, Any] | None = None


class ReviewCasePage(Struct):
    items: list[ReviewCase]
    next_cursor: str | None
