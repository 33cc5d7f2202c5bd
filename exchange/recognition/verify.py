"""Pure checks of what a peer presents: certificates, credentials, feed pages.

Each way a presented document can be wrong has its own error (and problem type), so an operator
and the origin's seller can tell a forgery from a replay from an expired or revoked certificate.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from exchange.listings.schemas import ProductMetadata
from exchange.platform.canonical import sha256_digest
from exchange.platform.errors import DataexError
from exchange.platform.signing import Jws, SigningError, b64url_decode, verify_compact
from exchange.platform.validation import collect_errors
from exchange.recognition.schemas import Jwks


class RecognitionError(DataexError):
    """A presented certificate, credential or feed page that is not accepted."""

    status = 422
    code = "recognition_refused"
    title = "Not recognised"


class UntrustedIssuer(RecognitionError):
    code = "recognition_untrusted_issuer"
    title = "The issuer is not a trusted peer exchange"


class UnknownKey(RecognitionError):
    code = "recognition_unknown_key"
    title = "Signed by a key the issuer's pinned JWKS does not hold"


class BadSignature(RecognitionError):
    code = "recognition_bad_signature"
    title = "The signature does not verify (tampered or malformed)"


class DigestMismatch(RecognitionError):
    code = "recognition_digest_mismatch"
    title = "The metadata does not match the certificate's revision digest"


class CertificateExpired(RecognitionError):
    code = "recognition_certificate_expired"
    title = "The certificate has expired"


class CertificateRevoked(RecognitionError):
    status = 409
    code = "recognition_certificate_revoked"
    title = "The certificate was revoked by its issuer"


class RevisionReplayed(RecognitionError):
    status = 409
    code = "recognition_revision_replayed"
    title = "An older revision than the one already recognised"


class RefusedByLocalPolicy(RecognitionError):
    code = "recognition_refused_by_policy"
    title = "Refused by this exchange's negative list"


class FeedUnavailable(RecognitionError):
    status = 503
    code = "recognition_feed_unavailable"
    title = "The peer's feed could not be read to its end"


class CredentialInvalid(RecognitionError):
    code = "credential_invalid"
    title = "The member credential is not accepted"


def unverified_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims of a compact JWS, not yet verified (to route to the right keys)."""
    try:
        header_b64, claims_b64, _ = token.split(".")
        header = msgspec.json.decode(b64url_decode(header_b64))
        claims = msgspec.json.decode(b64url_decode(claims_b64))
    except (ValueError, msgspec.DecodeError) as error:
        raise BadSignature("not a compact JWS") from error
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise BadSignature("the JWS header and payload must be JSON objects")
    return header, claims


def verify_signed(token: str, issuer: str, keys: Jwks, *, typ: str) -> Jws:
    """Verify a compact JWS by ``issuer`` with its pinned ``keys``: unknown kid, a signature
    that does not verify, and a wrong ``typ`` or ``iss`` each raise their own error."""
    header, claims = unverified_parts(token)
    kid = header.get("kid")
    if not any(k.get("kid") == kid for k in keys.get("keys", [])):
        raise UnknownKey(
            f"signed with key {kid!r}, which is not among the keys pinned for {issuer}",
            extensions={"kid": kid, "issuer": issuer},
        )
    try:
        verified = verify_compact(token, keys)
    except SigningError as error:
        raise BadSignature(f"{error}: the document was altered after signing") from error
    if header.get("typ") != typ:
        raise BadSignature(f"typ is {header.get('typ')!r}, expected {typ!r}")
    if claims.get("iss") != issuer:
        raise UntrustedIssuer(f"issued by {claims.get('iss')!r}, not by {issuer}")
    return verified


def issuer_keys(token: str, peers: dict[str, Jwks]) -> tuple[str, Jwks]:
    """The trusted peer that claims to have issued ``token``, and its pinned keys."""
    _, claims = unverified_parts(token)
    issuer = claims.get("iss")
    if not isinstance(issuer, str) or issuer not in peers:
        raise UntrustedIssuer(
            f"issuer {issuer!r} is not a trusted peer exchange here",
            extensions={"issuer": issuer, "trusted": sorted(peers)},
        )
    return issuer, peers[issuer]


def check_expiry(claims: dict[str, Any], now: datetime, what: str) -> None:
    exp = claims.get("exp")
    if not isinstance(exp, int):
        raise BadSignature(f"the {what} has no expiry (exp)")
    if exp <= int(now.timestamp()):
        raise CertificateExpired(
            f"the {what} expired at {datetime.fromtimestamp(exp, tz=UTC).isoformat()}",
            extensions={"exp": exp},
        )


def check_metadata(claims: dict[str, Any], metadata: dict[str, Any]) -> ProductMetadata:
    """The metadata as typed, if its RFC 8785 SHA-256 digest is the certificate's."""
    if collect_errors(ProductMetadata, metadata):
        raise DigestMismatch("the metadata is not a complete product description")
    typed = msgspec.convert(metadata, ProductMetadata)
    digest = sha256_digest(typed)
    if digest != claims.get("revision_digest"):
        raise DigestMismatch(
            f"the metadata digests to {digest}, the certificate says"
            f" {claims.get('revision_digest')}",
            extensions={"digest": digest, "certified": claims.get("revision_digest")},
        )
    return typed


def check_credential_holder(credential: dict[str, Any], certificate: dict[str, Any]) -> None:
    """The credential is the certificate's seller's (same USCC)."""
    seller = certificate.get("seller") or {}
    if credential.get("uscc") != seller.get("uscc"):
        raise CredentialInvalid(
            f"the credential is for {credential.get('uscc')!r}, the product's seller is"
            f" {seller.get('uscc')!r}"
        )
