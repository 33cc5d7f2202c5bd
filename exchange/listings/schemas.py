"""A data product's metadata (listing-and-contracts.md) and the API shapes around it."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from contracts.policy.attributes import (
    ContentFlag,
    Country,
    DataLevel,
    PersonalInfo,
    PublicData,
    RegulatedDomain,
    SourceKind,
    ThirdPartyRights,
)
from contracts.policy.schemas import Decision
from exchange.identity.schemas import Contact
from exchange.listings.states import (
    ObjectionClaim,
    ObjectionState,
    ProductState,
    SuspendedBy,
)
from exchange.platform.metering import Dimension
from exchange.platform.money import fen

ProductType = Literal[
    "dataset", "report", "api", "index", "model", "visualisation", "service", "tool"
]
Sector = Literal[
    "MFG", "AGRI", "TRADE", "TRANSPORT", "FINANCE", "SCI_TECH", "CULTURE_TOURISM", "HEALTH",
    "EMERGENCY", "METEOROLOGY", "URBAN_GOV", "GREEN_LOWCARBON", "OTHER",
]  # fmt: skip
DeliveryMode = Literal["file", "api", "sandbox"]
Pricing = Literal["one_off", "subscription", "metered"]
UpdateFrequency = Literal[
    "realtime", "hourly", "daily", "weekly", "monthly", "quarterly", "yearly", "once"
]
Text = Annotated[str, Meta(min_length=1, max_length=200)]
LongText = Annotated[str, Meta(min_length=1, max_length=5000)]
Sha256 = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the file")]
Tag = Annotated[str, Meta(min_length=1, max_length=32)]
MAX_SAMPLE_ROWS = 20


class EvidenceRef(Struct, forbid_unknown_fields=True, frozen=True):
    """A document the seller holds, identified by a reference and the SHA-256 of its bytes."""

    name: Text
    uri: Annotated[str, Meta(min_length=1, max_length=500)]
    sha256: Sha256


class FieldBoundsSpec(Struct, forbid_unknown_fields=True, frozen=True):
    """The range a numeric field's values lie in, public: DP aggregates clamp to it."""

    lower: float
    upper: float


class FieldSpec(Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """A field of the data. ``sensitivity`` marks identifiers and personal information (never
    in a sandbox job's output); ``bounds`` and ``categories`` are what DP aggregate queries may
    use (a numeric range; the public values a group-by field takes). All three are omitted when
    unset, so revisions from before them keep their digests."""

    name: Annotated[str, Meta(min_length=1, max_length=100)]
    type: Annotated[str, Meta(min_length=1, max_length=50)]
    meaning: Annotated[str, Meta(min_length=1, max_length=500)]
    sensitivity: Literal["identifier", "personal_info"] | None = None
    bounds: FieldBoundsSpec | None = None
    categories: Annotated[
        list[Annotated[str, Meta(min_length=1, max_length=200)]], Meta(max_length=1000)
    ] = []


class Scale(Struct, forbid_unknown_fields=True, frozen=True):
    rows: Annotated[int, Meta(ge=0)] | None = None
    size_bytes: Annotated[int, Meta(ge=0)] | None = None
    calls_per_day: Annotated[int, Meta(ge=0)] | None = None


class TimeCoverage(Struct, forbid_unknown_fields=True, frozen=True):
    start: date
    end: date | None = None


class Sample(Struct, forbid_unknown_fields=True, frozen=True):
    rows: Annotated[list[dict[str, Any]], Meta(max_length=MAX_SAMPLE_ROWS)] = []
    file: EvidenceRef | None = None


class DeliveryFile(Struct, forbid_unknown_fields=True, frozen=True):
    """A file the revision delivers: the seller uploads bytes that must hash to ``sha256``."""

    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
    sha256: Sha256
    size_bytes: Annotated[int, Meta(ge=0, le=1 << 40)]


class Manual(Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """The product manual (数据说明书). ``files``: what file delivery hands over (omitted when
    empty, so revisions from before it keep their digests)."""

    fields: Annotated[list[FieldSpec], Meta(min_length=1, max_length=500)]
    scale: Scale
    time_coverage: TimeCoverage
    update_frequency: UpdateFrequency
    format: Annotated[str, Meta(min_length=1, max_length=50)]
    sample: Sample
    files: Annotated[list[DeliveryFile], Meta(max_length=100)] = []


class SourceInfo(Struct, forbid_unknown_fields=True, frozen=True):
    kind: SourceKind
    lawful_statement: LongText
    legality_proof: bool
    upstream_forbids_resale: bool
    evidence: Annotated[list[EvidenceRef], Meta(max_length=50)] = []
    upstream_licence: Annotated[str, Meta(max_length=2000)] | None = None


class Classification(Struct, forbid_unknown_fields=True, frozen=True):
    data_level: DataLevel
    personal_info: PersonalInfo
    third_party_rights: ThirdPartyRights
    public_data: PublicData
    content_flags: list[ContentFlag] = []
    regulated_domains: list[RegulatedDomain] = []
    general_grade: Annotated[int, Meta(ge=1, le=4)] | None = None


class Rights(Struct, forbid_unknown_fields=True, frozen=True):
    """The separable rights the buyer gets (持有权, 加工使用权, 经营权)."""

    holding: bool
    use: bool
    operating: bool


class SandboxTerms(Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """What one sandbox job of the plan may use, and the grant's privacy budget (ε)."""

    cpu_seconds: Annotated[int, Meta(ge=1, le=3600)] = 10
    wall_seconds: Annotated[int, Meta(ge=1, le=3600)] = 15
    memory_mb: Annotated[int, Meta(ge=64, le=65536)] = 512
    pids: Annotated[int, Meta(ge=3, le=1024)] = 32
    output_kb: Annotated[int, Meta(ge=1, le=1048576)] = 1024
    k: Annotated[int, Meta(ge=1, le=1_000_000)] = 10
    epsilon_total: Annotated[float, Meta(ge=0, le=1000)] = 0.0
    epsilon_per_job: Annotated[float, Meta(ge=0, le=1000)] = 0.0
    max_rows: Annotated[int, Meta(ge=1, le=10**10)] = 1_000_000


class Plan(Struct, forbid_unknown_fields=True, frozen=True, omit_defaults=True):
    """A plan of the product. ``dimensions``: what delivery meters, with quotas per grant and
    unit prices (a metered plan's price is then the buyer's spend cap); omitted when empty."""

    id: Annotated[str, Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]
    name: Text
    pricing: Pricing
    price_fen: Annotated[int, fen(le=10**13)]
    free: bool
    purposes: Annotated[
        list[Annotated[str, Meta(min_length=1, max_length=100)]], Meta(min_length=1)
    ]
    territory: Annotated[list[Country], Meta(min_length=1)]
    max_term_days: Annotated[int, Meta(ge=1, le=36500)]
    redistribution: bool
    acceptance_days: Annotated[int, Meta(ge=0, le=90)]
    dimensions: Annotated[list[Dimension], Meta(max_length=16)] = []
    sandbox: SandboxTerms | None = None  # sandbox delivery: limits per job, the ε budget


class ProductMetadata(Struct, forbid_unknown_fields=True, frozen=True):
    """A complete, submittable product. Its digest is over its RFC 8785 canonical JSON."""

    name_zh: Text
    summary: LongText
    product_type: ProductType
    sector: Sector
    manual: Manual
    contact: Contact
    source: SourceInfo
    classification: Classification
    rights: Rights
    delivery: Annotated[list[DeliveryMode], Meta(min_length=1, max_length=3)]
    plans: Annotated[list[Plan], Meta(min_length=1, max_length=20)]
    name_en: Text | None = None
    tags: Annotated[list[Tag], Meta(max_length=20)] = []
    registration_code: Annotated[str, Meta(max_length=64)] | None = None


class ProductDraft(Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Any subset of the metadata: a draft may be incomplete, never ill-typed."""

    name_zh: Text | UnsetType = UNSET
    summary: LongText | UnsetType = UNSET
    product_type: ProductType | UnsetType = UNSET
    sector: Sector | UnsetType = UNSET
    manual: Manual | UnsetType = UNSET
    contact: Contact | UnsetType = UNSET
    source: SourceInfo | UnsetType = UNSET
    classification: Classification | UnsetType = UNSET
    rights: Rights | UnsetType = UNSET
    delivery: Annotated[list[DeliveryMode], Meta(min_length=1, max_length=3)] | UnsetType = UNSET
    plans: Annotated[list[Plan], Meta(min_length=1, max_length=20)] | UnsetType = UNSET
    name_en: Text | UnsetType | None = UNSET
    tags: Annotated[list[Tag], Meta(max_length=20)] | UnsetType = UNSET
    registration_code: Annotated[str, Meta(max_length=64)] | UnsetType | None = UNSET


class RevisionInfo(Struct, frozen=True):
    number: int
    digest: str
    change: Literal["initial", "material", "cosmetic"]
    created_at: datetime
    metadata: ProductMetadata


class ReviewVerdict(Struct, frozen=True):
    """One reviewer's decision on the product's case (who decided is in the case and audit)."""

    verdict: str
    reason: str
    decided_at: datetime


class ReviewSummary(Struct, frozen=True):
    case_id: uuid.UUID
    state: str
    revision: int
    hits: list[str]
    decisions: list[ReviewVerdict]


class Product(Struct, frozen=True):
    id: uuid.UUID
    seller_org_id: uuid.UUID
    state: ProductState
    product_code: str | None
    draft: dict[str, Any] | None
    live: RevisionInfo | None
    pending: RevisionInfo | None
    suspended_reason: str | None
    suspended_by: SuspendedBy | None
    review: ReviewSummary | None
    policy: Decision | None  # the latest listing-time policy decision
    created_at: datetime
    updated_at: datetime
    # Staff recorded that a law, regulation, sector rule or contract forbids trading it (NEG-08).
    legal_prohibition: bool = False


class ProductRow(Struct, frozen=True):
    """A product as staff list it, in any state: what tells it apart at a glance. The names
    are the live revision's, else the pending one's, else the draft's (None in an empty draft)."""

    id: uuid.UUID
    product_code: str | None
    name_zh: str | None
    name_en: str | None
    seller_org_id: uuid.UUID
    seller_name: str
    state: ProductState
    suspended_by: SuspendedBy | None
    legal_prohibition: bool
    recognised_from: str | None
    created_at: datetime
    updated_at: datetime


class ProductPage(Struct):
    items: list[Product]
    next_cursor: str | None


class Reason(Struct, forbid_unknown_fields=True):
    reason: Annotated[str, Meta(min_length=1, max_length=2000)]


class LegalProhibitionProposal(Struct, forbid_unknown_fields=True, frozen=True):
    """Whether a law, regulation, sector rule or contract forbids trading the product (the
    policy attribute ``product.legal_prohibition``, NEG-08), why, and what says so."""

    prohibited: bool
    reason: Annotated[str, Meta(min_length=1, max_length=4000)]
    reference: Annotated[
        str,
        Meta(min_length=1, max_length=500,
             description="the law, regulation, sector rule or contract, or the notice"),
    ]  # fmt: skip


class Certificate(Struct, frozen=True):
    product_code: str
    revision: int
    revision_digest: str
    jws: str
    kid: str


# --- objections to a registration (异议登记) ---------------------------------------------------

Outcome = Literal["upheld", "dismissed"]


class ListingObjectionFiling(Struct, forbid_unknown_fields=True, frozen=True):
    """A third party's claim of rights in a listed product: what it claims, in its own words,
    and the SHA-256 of each document it holds (the documents stay with it)."""

    claim: ObjectionClaim
    statement: Annotated[str, Meta(min_length=1, max_length=5000)]
    evidence_sha256: Annotated[list[Sha256], Meta(max_length=50)] = []


class ListingObjectionDecision(Struct, forbid_unknown_fields=True, frozen=True):
    outcome: Outcome
    reason: Annotated[
        str,
        Meta(min_length=1, max_length=2000,
             description="public, on the product's status: name no person"),
    ]  # fmt: skip


class ListingObjection(Struct, frozen=True):
    """An objection as staff, the claimant and the seller see it. ``suspended_listing``: staff
    suspended the listing pending the decision; ``listing_state``: the product's state now;
    ``note``: what follows from the decision for the listing."""

    id: uuid.UUID
    product_id: uuid.UUID
    product_code: str
    seller_org_id: uuid.UUID
    claimant_org_id: uuid.UUID
    claim: ObjectionClaim
    statement: str
    evidence_sha256: list[str]
    state: ObjectionState
    registered_at: datetime
    suspended_listing: bool
    suspension_reason: str | None
    suspended_at: datetime | None
    decided_at: datetime | None
    outcome: Outcome | None
    decision_reason: str | None
    listing_state: ProductState
    note: str | None = None


class ListingObjectionPage(Struct):
    items: list[ListingObjection]
    next_cursor: str | None


class PublicListingObjection(Struct, frozen=True):
    """An objection on the product's public status: that it is registered, whether it holds
    the listing suspended, and its decision. Never who objected or what they wrote."""

    id: uuid.UUID
    claim: ObjectionClaim
    state: ObjectionState
    suspended_listing: bool
    registered_at: datetime
    decided_at: datetime | None
    outcome: Outcome | None
    decision_reason: str | None


class CertificateStatus(Struct, frozen=True):
    """Whether a product code's certificate stands, signed so it can be relayed and kept.
    ``objections``: third parties' objections to the registration and their decisions, oldest
    first (in the signed claims too)."""

    product_code: str
    state: ProductState
    revision: int | None
    revision_digest: str | None
    checked_at: datetime
    jws: str
    objections: list[PublicListingObjection] = []


# --- the exchange's public keys -----------------------------------------------------------------


class PublicJwk(Struct, frozen=True, omit_defaults=True):
    """An Ed25519 public key (RFC 8037). ``dataex_purpose`` marks a delivery key (delivery
    tokens, the gateway's HTTP message signatures); absent for the exchange's signing key
    (certificates, receipts, tree heads, identity, feed)."""

    kty: Literal["OKP"]
    crv: Literal["Ed25519"]
    x: str
    kid: str
    use: Literal["sig"]
    alg: Literal["EdDSA"]
    dataex_purpose: Literal["delivery"] | None = None


class JwkSet(Struct, frozen=True):
    """A JWK Set (RFC 7517): current and previous public keys, newest first."""

    keys: list[PublicJwk]
