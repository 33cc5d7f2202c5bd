"""What crosses the API boundary for organisations and tokens."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from exchange.platform.auth import Role

Name = Annotated[str, Meta(min_length=1, max_length=200)]
TokenName = Annotated[str, Meta(min_length=1, max_length=100)]
RegionCode = Annotated[
    str,
    Meta(pattern=r"^[0-9]{6}$", description="six-digit administrative division code (GB/T 2260)"),
]
Roles = Annotated[list[Role], Meta(min_length=1, max_length=4)]
# Why an exporter's personal information may leave China without a standard contract or an
# assessment (CAC Order No. 16, 2024, Art. 5): the policy attribute ``exporter.exemption``
# (`contracts.policy.attributes.Exemption`, which a unit test keeps equal to this).
ExportExemption = Literal["contract_with_individual", "cross_border_hr", "emergency", "re_export"]


class Contact(Struct, forbid_unknown_fields=True):
    name: Annotated[str, Meta(min_length=1, max_length=100)]
    email: Annotated[str, Meta(pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$", max_length=254)]
    phone: Annotated[str, Meta(pattern=r"^\+?[0-9][0-9 -]{5,19}$")]


class OrganisationCreate(Struct, forbid_unknown_fields=True):
    name: Name
    uscc: Annotated[
        str, Meta(max_length=64, description="unified social credit code; lower case accepted")
    ]
    roles: Roles
    region: RegionCode
    contact: Contact


class OrganisationUpdate(Struct, forbid_unknown_fields=True):
    name: Name | UnsetType = UNSET
    roles: Roles | UnsetType = UNSET
    region: RegionCode | UnsetType = UNSET
    contact: Contact | UnsetType = UNSET


class SuspensionIn(Struct, forbid_unknown_fields=True):
    reason: Annotated[str, Meta(min_length=1, max_length=2000)]


class ExporterStatus(Struct, forbid_unknown_fields=True, frozen=True):
    """What staff recorded of an organisation as a data exporter, for the cross-border route of
    its exports (policy-rules.md, route steps 2 and 3): a critical information infrastructure
    operator, an exemption, or a free-trade-zone exemption."""

    ciio: bool = False
    exemption: ExportExemption | None = None
    ftz_exempt: bool = False


class Organisation(Struct):
    id: uuid.UUID
    name: str
    uscc: str | None
    roles: list[str]
    region: str
    contact: Contact
    is_operator: bool
    created_at: datetime
    updated_at: datetime
    suspended_at: datetime | None = None
    suspended_reason: str | None = None
    exporter: ExporterStatus = ExporterStatus()


class OrganisationPage(Struct):
    items: list[Organisation]
    next_cursor: str | None


TokenStatus = Literal["active", "expired", "revoked"]


class TokenCreate(Struct, forbid_unknown_fields=True):
    name: TokenName
    roles: Roles
    expires_in_days: Annotated[int, Meta(ge=1, le=366)] = 90


class Token(Struct):
    """A token as listed: never its secret."""

    id: uuid.UUID
    org_id: uuid.UUID
    name: str
    roles: list[str]
    status: TokenStatus
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None


class TokenIssued(Struct):
    """A new token with its secret: shown this once and never again."""

    token: str
    details: Token


class TokenPage(Struct):
    items: list[Token]
    next_cursor: str | None


class Me(Struct):
    organisation: Organisation
    token_id: uuid.UUID
    roles: list[str]
