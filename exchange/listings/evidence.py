"""What the listing room attaches to a dispute over a trade: the listing the buyer relied on.

``listing.json`` (canonical JSON, RFC 8785) holds the revision the trade bought — its number,
digest, kind of change, time and full metadata (the digest is SHA-256 over the metadata's
canonical JSON, so a reader can check it) —, the digests of the manual (数据说明书) and of its
sample (each ``sha256:`` over its canonical JSON), the sample's and the delivered files' own
SHA-256 as the seller declared them, the product's state now, and the listing certificate
stored for the product (compact JWS, its ``kid`` and the revision it certifies). A product
keeps one certificate, its live revision's: when the trade bought an earlier revision,
``certificate_covers_revision`` is false and the certificate is the later one's.
"""

from __future__ import annotations

import uuid
from typing import Any, Final

import msgspec

from exchange.platform.canonical import canonical_json, sha256_digest
from exchange.platform.db import Executor
from exchange.platform.disputes import SystemEvidence
from exchange.platform.signing import b64url_decode, jws_header

LISTING_TYPE: Final = "dataex.evidence.listing.v1"


def _certificate(jws: str | None) -> dict[str, Any] | None:
    if jws is None:
        return None
    claims = msgspec.json.decode(b64url_decode(jws.split(".")[1]))
    return {
        "jws": jws, "kid": jws_header(jws).get("kid"), "jti": claims.get("jti"),
        "revision": claims.get("revision"), "revision_digest": claims.get("revision_digest"),
        "iat": claims.get("iat"), "exp": claims.get("exp"),
    }  # fmt: skip


async def listing_evidence(
    conn: Executor, product_id: uuid.UUID, revision: int
) -> list[SystemEvidence]:
    """``listing.json`` of the product's ``revision``; empty when either does not exist."""
    product = await conn.fetchrow(
        "SELECT id, product_code, state, live_revision, suspended_by, suspended_reason,"
        " recognised_from, certificate FROM products WHERE id = $1",
        product_id,
    )
    row = await conn.fetchrow(
        "SELECT number, digest, change, created_at, metadata FROM product_revisions"
        " WHERE product_id = $1 AND number = $2",
        product_id, revision,
    )  # fmt: skip
    if product is None or row is None:
        return []
    metadata: dict[str, Any] = row["metadata"]
    manual = metadata.get("manual") or {}
    sample = manual.get("sample")
    certificate = _certificate(product["certificate"])
    document = {
        "type": LISTING_TYPE,
        "product_id": product["id"],
        "product_code": product["product_code"],
        "product_state": product["state"],
        "suspended_by": product["suspended_by"],
        "suspended_reason": product["suspended_reason"],
        "recognised_from": product["recognised_from"],
        "live_revision": product["live_revision"],
        "revision": {
            "number": row["number"], "digest": row["digest"], "change": row["change"],
            "created_at": row["created_at"], "metadata": metadata,
        },
        "manual_digest": sha256_digest(manual) if manual else None,
        "sample_digest": sha256_digest(sample) if sample is not None else None,
        "sample_file": (sample or {}).get("file"),
        "files": manual.get("files", []),
        "certificate": certificate,
        "certificate_covers_revision": certificate is not None
        and certificate["revision"] == row["number"]
        and certificate["revision_digest"] == row["digest"],
    }  # fmt: skip
    return [SystemEvidence("listing", "listing.json", "application/json", canonical_json(document))]
