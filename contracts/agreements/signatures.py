"""Organisations' Ed25519 keys and detached JWS signatures over contract digests and offers.

A party signs with its own key: a detached compact JWS (RFC 7515 Appendix F), ``alg`` EdDSA,
``kid`` = the RFC 7638 thumbprint of the public key it registered. The payload is never sent:
for a contract it is the ASCII contract digest (``sha256:…``), for a standing offer the RFC 8785
canonical JSON of the offer's terms. The server rebuilds the payload and verifies.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import asyncpg
import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from exchange.platform.db import Connection, Executor
from exchange.platform.errors import DataexError, FieldError, InvalidInput
from exchange.platform.signing import KeyRing, SigningKey, b64url, b64url_decode, public_jwk


class InvalidSignatureError(DataexError):
    status = 422
    code = "invalid_signature"
    title = "The signature does not verify"


class PublicKeyIn(msgspec.Struct, forbid_unknown_fields=False):
    # Bounded so a hostile key cannot be megabytes long (an Ed25519 x is 43 characters).
    kty: Annotated[str, msgspec.Meta(max_length=16)]
    crv: Annotated[str, msgspec.Meta(max_length=16)]
    x: Annotated[str, msgspec.Meta(max_length=100)]
    d: Annotated[str, msgspec.Meta(max_length=100)] | None = None


class OrgKey(msgspec.Struct, frozen=True):
    kid: str
    org_id: uuid.UUID
    jwk: dict[str, str]
    created_at: datetime
    # True when the exchange holds the key's private half (sealed under the master key) and
    # signs with it on the organisation's request. No default: it is always read from the row.
    custodial: bool


_KEY_COLUMNS = "kid, org_id, jwk, created_at, sealed_private IS NOT NULL AS custodial"


def _org_key(row: asyncpg.Record) -> OrgKey:
    """The one way a stored key becomes an answer: custodial is a fact of the row."""
    return OrgKey(
        kid=row["kid"],
        org_id=row["org_id"],
        jwk=row["jwk"],
        created_at=row["created_at"],
        custodial=row["custodial"],
    )


def thumbprint_kid(x: str) -> str:
    import hashlib

    member = '{"crv":"Ed25519","kty":"OKP","x":"' + x + '"}'
    return b64url(hashlib.sha256(member.encode()).digest())


async def register_key(
    conn: Connection, org_id: uuid.UUID, key: PublicKeyIn, now: datetime
) -> OrgKey:
    if key.d is not None:
        raise InvalidInput(
            "this is a private key: send only the public JWK (never share 'd')",
            errors=[FieldError(path="d", message="private key material", source="body")],
        )
    if key.kty != "OKP" or key.crv != "Ed25519":
        raise InvalidInput(
            "only Ed25519 keys (kty OKP, crv Ed25519) are accepted",
            errors=[FieldError(path="crv", message=f"{key.kty}/{key.crv}", source="body")],
        )
    try:
        raw = b64url_decode(key.x)
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError as error:
        raise InvalidInput(
            "x is not a base64url Ed25519 public key",
            errors=[FieldError(path="x", message="not 32 base64url bytes", source="body")],
        ) from error
    kid = thumbprint_kid(key.x)
    jwk = public_jwk(Ed25519PublicKey.from_public_bytes(raw), kid)
    await conn.execute(
        "INSERT INTO org_keys (kid, org_id, jwk, created_at) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (kid) DO NOTHING",
        kid, org_id, jwk, now,
    )  # fmt: skip
    # The stored row, which may be older (the same key registered again, or the public half of
    # the organisation's custodial key): it says when the key was registered and who holds it.
    row = await conn.fetchrow(f"SELECT {_KEY_COLUMNS} FROM org_keys WHERE kid = $1", kid)
    if row is None or row["org_id"] != org_id:
        raise InvalidInput("this public key is registered to another organisation")
    return _org_key(row)


async def create_custodial_key(
    conn: Connection, org_id: uuid.UUID, keyring: KeyRing, now: datetime
) -> OrgKey:
    """A key the exchange holds for the organisation (sealed under the master key) and signs
    with when that organisation asks it to. One per organisation."""
    existing = await conn.fetchrow(
        f"SELECT {_KEY_COLUMNS} FROM org_keys WHERE org_id = $1"
        " AND sealed_private IS NOT NULL AND revoked_at IS NULL",
        org_id,
    )
    if existing is not None:
        return _org_key(existing)
    private = Ed25519PrivateKey.generate()
    x = b64url(private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    kid = thumbprint_kid(x)
    jwk = public_jwk(private.public_key(), kid)
    row = await conn.fetchrow(
        "INSERT INTO org_keys (kid, org_id, jwk, created_at, sealed_private)"
        f" VALUES ($1, $2, $3, $4, $5) RETURNING {_KEY_COLUMNS}",
        kid, org_id, jwk, now, keyring.seal(kid, private),
    )  # fmt: skip
    assert row is not None
    return _org_key(row)


async def custodial_key(conn: Executor, org_id: uuid.UUID, keyring: KeyRing) -> SigningKey | None:
    row = await conn.fetchrow(
        "SELECT kid, sealed_private FROM org_keys WHERE org_id = $1"
        " AND sealed_private IS NOT NULL AND revoked_at IS NULL",
        org_id,
    )
    return None if row is None else keyring.open(row["kid"], bytes(row["sealed_private"]))


async def list_keys(conn: Executor, org_id: uuid.UUID) -> list[OrgKey]:
    rows = await conn.fetch(
        f"SELECT {_KEY_COLUMNS} FROM org_keys WHERE org_id = $1 AND revoked_at IS NULL"
        " ORDER BY created_at",
        org_id,
    )
    return [_org_key(r) for r in rows]


def _parts(token: str) -> tuple[str, dict[str, Any], bytes]:
    try:
        header_b64, payload_b64, signature_b64 = token.split(".")
        header = msgspec.json.decode(b64url_decode(header_b64))
        signature = b64url_decode(signature_b64)
    except (ValueError, msgspec.DecodeError) as error:
        raise InvalidSignatureError("not a compact JWS (header..signature)") from error
    if payload_b64:
        raise InvalidSignatureError("send a detached JWS: the payload part must be empty")
    if header.get("alg") != "EdDSA":
        raise InvalidSignatureError(f"alg must be EdDSA, got {header.get('alg')!r}")
    return header_b64, header, signature


async def verify_detached(conn: Executor, org_id: uuid.UUID, token: str, payload: bytes) -> str:
    """Verify ``token`` over ``payload`` with one of the organisation's keys; returns the kid."""
    header_b64, header, signature = _parts(token)
    kid = header.get("kid")
    row = await conn.fetchrow(
        "SELECT jwk FROM org_keys WHERE kid = $1 AND org_id = $2 AND revoked_at IS NULL",
        kid, org_id,
    )  # fmt: skip
    if row is None:
        raise InvalidSignatureError(f"kid {kid!r} is not a registered key of the signing party")
    public = Ed25519PublicKey.from_public_bytes(b64url_decode(row["jwk"]["x"]))
    try:
        public.verify(signature, f"{header_b64}.{b64url(payload)}".encode())
    except InvalidSignature as error:
        raise InvalidSignatureError(
            "the signature does not verify over the expected payload (for a contract: its"
            " digest as ASCII; for an offer: the canonical JSON of its terms)"
        ) from error
    return str(kid)
