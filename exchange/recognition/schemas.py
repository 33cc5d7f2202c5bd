"""What crosses the boundary between exchanges: identity, peers, credentials, recognitions, feed."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

ExchangeCode = Annotated[str, Meta(pattern=r"^[A-Z][A-Z0-9]{1,7}$")]
Url = Annotated[str, Meta(pattern=r"^https?://[^\s]+$", max_length=500)]
Jwks = dict[str, list[dict[str, str]]]

IDENTITY_TYPE = "dataex-exchange-identity+jws"
CREDENTIAL_TYPE = "dataex-member-credential+jws"
FEED_TYPE = "dataex-listing-feed+jws"


class ExchangeIdentity(Struct, frozen=True):
    """``GET /.well-known/dataex-exchange``: who this exchange is and how to follow it.

    ``jws`` signs the same facts (without itself) with the exchange's current key, so a peer
    pinning the JWKS can check the document it fetched was written by the key holder."""

    code: str
    name: str
    jwks: Jwks
    feed_url: str
    certificate_status_url: str
    events: list[str]
    policy_list_version: str | None
    policy_list_digest: str | None
    jws: str


class PeerCreate(Struct, frozen=True, forbid_unknown_fields=True):
    """A peer to trust: its code, where it serves, and its public keys pinned out of band."""

    code: ExchangeCode
    base_url: Url
    jwks: Jwks
    identity: str | None = None  # its signed identity document; fetched from base_url if absent


class Peer(Struct, frozen=True):
    code: str
    name: str
    base_url: str
    feed_url: str
    kids: list[str]
    cursor: int
    trusted: bool
    added_at: datetime
    removed_at: datetime | None
    last_pull_at: datetime | None
    last_error: str | None


class CredentialIssue(Struct, frozen=True, forbid_unknown_fields=True):
    org_id: uuid.UUID
    valid_days: Annotated[int, Meta(ge=1, le=3650)] = 365


class MemberCredential(Struct, frozen=True):
    """A member credential (JWS) and the claims it carries."""

    id: uuid.UUID
    org_id: uuid.UUID
    jws: str
    claims: dict[str, Any]
    expires_at: datetime


class CredentialPresented(Struct, frozen=True, forbid_unknown_fields=True):
    credential: str


class RecognitionRequest(Struct, frozen=True, forbid_unknown_fields=True):
    """A listing certificate, the revision metadata it digests, and the seller's member
    credential (needed unless the seller was registered here from one already)."""

    certificate: str
    metadata: dict[str, Any]
    credential: str | None = None


class Recognition(Struct, frozen=True):
    origin: str
    product_code: str
    product_id: uuid.UUID | None
    revision: int
    revision_digest: str
    origin_state: Literal["listed", "suspended", "delisted"]
    outcome: Literal["recognised", "refused"]
    refusal: dict[str, Any] | None
    updated_at: datetime


class FeedItem(Struct, frozen=True, omit_defaults=True):
    """One listing event of the origin; ``published`` carries what a peer needs to verify it."""

    seq: int
    event: Literal["published", "suspended", "delisted"]
    product_code: str
    at: datetime
    revision: int | None = None
    revision_digest: str | None = None
    certificate: str | None = None
    metadata: dict[str, Any] | None = None
    credential: str | None = None
    reason: str | None = None


class FeedClaims(Struct, frozen=True):
    iss: str
    after: int
    items: list[FeedItem]
    next_after: int
    iat: int


class FeedPage(Struct, frozen=True):
    """A page of the feed: the signed claims (compact JWS), and where the next page starts."""

    jws: str
    next_after: int
    count: int
