"""The disputes room's API shapes: a dispute, its evidence, and the resolutions.

A resolution is a tagged union on ``kind``: ``{"kind": "release_to_seller"}``,
``{"kind": "refund_buyer"}``, ``{"kind": "split", "refund_fen": N}``,
``{"kind": "redeliver", "by": "<RFC 3339>"}``, ``{"kind": "extend_acceptance", "days": N}``.
Its digest (`resolution_digest`) is what reviewers approve and parties sign.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Final, Literal

import msgspec
from msgspec import Meta, Struct

from exchange.platform.canonical import sha256_digest
from exchange.platform.events import DisputeReason, DisputeState
from exchange.platform.money import fen

Statement = Annotated[str, Meta(min_length=1, max_length=20_000)]
Note = Annotated[str, Meta(min_length=1, max_length=2000)]
Sha256Hex = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
Party = Literal["buyer", "seller"]
# The two four-eyes stages: a reviewer's resolution of a case under review, an admin's award of
# an escalated one.
Stage = Literal["review", "award"]
Submitter = Literal["buyer", "seller", "exchange", "staff"]
EvidenceType = Literal[
    "statement", "screenshot", "report", "correspondence", "data_sample", "expert_report",
    "award", "other",
]  # fmt: skip
# What a party or staff may upload; the exchange's own items carry the system kinds
# (contract, listing, grants, tokens, usage, job_receipts, ledger_receipt).
MEDIA_TYPES: Final = frozenset({
    "application/pdf", "image/png", "image/jpeg", "text/plain", "text/csv", "application/json",
    "application/zip", "application/octet-stream",
})  # fmt: skip
STAFF_TYPES: Final = frozenset({"award", "expert_report"})


class _Kind(Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind"):
    pass


class ReleaseToSeller(_Kind, frozen=True, tag="release_to_seller"):
    """The claim fails: what is held is posted to the seller (and the fee to the exchange)."""


class RefundBuyer(_Kind, frozen=True, tag="refund_buyer"):
    """The claim succeeds whole: what is held goes back to the buyer (a metered trade: what
    the disputed periods charged)."""


class Split(_Kind, frozen=True, tag="split"):
    """``refund_fen`` to the buyer, the rest to the seller and the fee pro rata
    (settlement's split rule)."""

    refund_fen: Annotated[int, fen(ge=1)]


class Redeliver(_Kind, frozen=True, tag="redeliver"):
    """The seller delivers again by ``by``, which becomes the trade's acceptance deadline."""

    by: Annotated[datetime, Meta(tz=True)]


class ExtendAcceptance(_Kind, frozen=True, tag="extend_acceptance"):
    """The acceptance period runs ``days`` longer (from the later of its end and now)."""

    days: Annotated[int, Meta(ge=1, le=365)]


Resolution = ReleaseToSeller | RefundBuyer | Split | Redeliver | ExtendAcceptance
ResolutionKind = Literal[
    "release_to_seller", "refund_buyer", "split", "redeliver", "extend_acceptance"
]


def normalised(resolution: Resolution) -> Resolution:
    """The resolution as it is hashed and stored: ``by`` in UTC, to the second."""
    if isinstance(resolution, Redeliver):
        return Redeliver(by=resolution.by.astimezone(UTC).replace(microsecond=0))
    return resolution


def resolution_digest(dispute_id: uuid.UUID, trade_id: uuid.UUID, resolution: Resolution) -> str:
    """``sha256:`` + hex SHA-256 of the RFC 8785 JSON ``{"dispute_id", "trade_id",
    "resolution"}``: what reviewers approve and what the parties sign (as ASCII)."""
    return sha256_digest(
        {
            "dispute_id": str(dispute_id),
            "trade_id": str(trade_id),
            "resolution": msgspec.to_builtins(normalised(resolution)),
        }
    )


def kind_of(resolution: Resolution) -> ResolutionKind:
    kind: ResolutionKind = msgspec.to_builtins(resolution)["kind"]
    return kind


# --- requests -------------------------------------------------------------------------------------


class DisputeIn(Struct, forbid_unknown_fields=True, kw_only=True):
    """``periods``: the posted billing periods an ``over_metered`` dispute is about (required
    for it, refused for any other reason)."""

    reason: DisputeReason
    claimed_fen: Annotated[int, fen(ge=0)]
    statement: Statement
    periods: Annotated[list[Annotated[int, Meta(ge=0)]], Meta(max_length=1000)] | None = None


class ResponseIn(Struct, forbid_unknown_fields=True):
    statement: Statement


class DisputeResolutionIn(Struct, forbid_unknown_fields=True):
    resolution: Resolution
    note: Note


class AgreementIn(Struct, forbid_unknown_fields=True, kw_only=True):
    """The party's detached JWS (EdDSA, a registered key) over the ASCII resolution digest,
    or ``custodial: true`` for the exchange to sign with the key it holds for the party."""

    resolution: Resolution
    jws: Annotated[str, Meta(min_length=1, max_length=4096)] | None = None
    custodial: bool = False


class EscalationIn(Struct, forbid_unknown_fields=True):
    forum: Annotated[str, Meta(min_length=1, max_length=200)]
    note: Note


class AwardIn(Struct, forbid_unknown_fields=True):
    """The arbitration's outcome and the SHA-256 of its document (an evidence item of type
    ``award`` uploaded to the dispute first)."""

    resolution: Resolution
    document_sha256: Sha256Hex
    note: Note


# --- answers --------------------------------------------------------------------------------------


class Proposal(Struct, frozen=True):
    """A resolution waiting for a second, different member of staff (four-eyes): at ``stage``
    review a reviewer's, for a second reviewer; at ``stage`` award (the dispute escalated) an
    admin's award, for a second admin naming the same resolution and the same award document
    (``document_sha256``, none at review)."""

    resolution: Resolution
    digest: str
    proposed_by: str
    proposed_at: datetime
    stage: Stage
    document_sha256: str | None


class AgreementSignature(Struct, frozen=True):
    party: Party
    digest: str
    resolution: Resolution
    kind: Literal["signature", "custodial"]
    kid: str
    jws: str
    signed_at: datetime


class Money(Struct, frozen=True):
    """What the resolution moved (settlement's outcome)."""

    state: str
    refund_fen: int
    seller_fen: int
    fee_fen: int
    ledger_seq: int | None


class Escalation(Struct, frozen=True):
    forum: str
    note: str
    escalated_at: datetime
    award_sha256: str | None = None


class Dispute(Struct, frozen=True, kw_only=True):
    id: uuid.UUID
    trade_id: uuid.UUID
    buyer_org_id: uuid.UUID
    seller_org_id: uuid.UUID
    claimant: Party
    reason: DisputeReason
    claimed_fen: int
    held_fen: int  # what escrow held for the trade when the dispute opened
    metered: bool
    periods: list[int]
    statement: str
    state: DisputeState
    allowed_actions: list[str]
    respond_by: datetime
    response: str | None
    responded_at: datetime | None
    acceptance_due: datetime  # the trade's, when the dispute opened
    grants_suspended: bool
    four_eyes: bool
    approvals_needed: int  # reviewers to resolve it, or admins to record its award
    pending: Proposal | None  # the stage of its state's (under review, escalated)
    signatures: list[AgreementSignature]
    resolution: Resolution | None
    resolution_digest: str | None
    resolution_note: str | None
    resolved_by: str | None
    money: Money | None
    escalation: Escalation | None
    evidence_items: int
    opened_at: datetime
    updated_at: datetime
    closed_at: datetime | None


class DisputeList(Struct, frozen=True):
    items: list[Dispute]


class DisputeTransition(Struct, frozen=True, kw_only=True):
    """One step of a dispute's transition table, as it was taken (``seq`` from 0: the
    opening, whose ``from_state`` is none)."""

    seq: int
    from_state: DisputeState | None
    action: str
    to_state: DisputeState
    actor: str
    at: datetime


class DisputeEvidenceItem(Struct, frozen=True, kw_only=True):
    """One evidence item: ``index`` is its place in the bundle (registration order),
    ``ledger_seq`` the ledger entry that registered its SHA-256."""

    index: int
    kind: str
    name: str
    media_type: str
    sha256: str
    size: int
    submitter: Submitter
    submitter_org_id: uuid.UUID | None
    submitted_at: datetime
    ledger_seq: int


class DisputeEvidenceList(Struct, frozen=True):
    items: list[DisputeEvidenceItem]
    total_bytes: int
