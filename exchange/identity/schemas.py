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
