"""The origin's side of propagation: a signed, cursor-paged feed of its own listing events.

Why a pulled HTTP feed rather than NATS across exchanges: two exchanges are run by different
organisations on different networks; an HTTPS GET crosses that boundary with nothing to operate
beyond what each already runs (no leaf-node links or cross-account stream sourcing to agree on),
each peer keeps its own cursor, and a peer that was down for a week catches up from its cursor.
Every page is a compact JWS by the origin's key, so a peer trusts the content, not the transport.

Order: an append takes a transaction-scoped advisory lock and numbers the row max+1, so rows are
numbered in commit order and a reader paging by ``seq`` never skips one that commits late.
Listing events are human-paced (a few per product), so serialising their appends costs nothing.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec

from exchange.platform.db import Connection, Executor
from exchange.platform.events import ListingEventData
from exchange.platform.settings import Settings
from exchange.platform.signing import SigningKey
from exchange.recognition.schemas import FEED_TYPE, FeedClaims, FeedItem, FeedPage

FEED_PATH = "/v1/recognition/feed"
MAX_PAGE = 500
EVENTS = ("published", "suspended", "delisted")


async def on_listing_event(
    conn: Connection, event: str, data: ListingEventData, at: datetime
) -> None:
    """The listing room's event hook: peers follow this exchange's own listing events."""
    await append(
        conn, event=event, product_id=uuid.UUID(data.product_id), product_code=data.product_code,
        revision=data.revision, revision_digest=data.revision_digest, reason=data.reason, at=at,
    )  # fmt: skip


async def append(
    conn: Connection,
    *,
    event: str,
    product_id: uuid.UUID,
    product_code: str | None,
    revision: int | None,
    revision_digest: str | None,
    reason: str | None,
    at: datetime,
) -> int | None:
    """Add this exchange's listing event to the feed (in the event's transaction).

    Products recognised from a peer are not re-published: each peer follows the origin."""
    product = await conn.fetchrow(
        "SELECT recognised_from, certificate FROM products WHERE id = $1", product_id
    )
    if product is None or product["recognised_from"] is not None or product_code is None:
        return None
    metadata = None
    if event == "published" and revision is not None:
        metadata = await conn.fetchval(
            "SELECT metadata FROM product_revisions WHERE product_id = $1 AND number = $2",
            product_id,
            revision,
        )
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('dataex.listing_feed'))")
    seq: int = await conn.fetchval(
        """
        INSERT INTO listing_feed (seq, event, product_id, product_code, revision, revision_digest,
                                  certificate, metadata, reason, at)
        SELECT coalesce(max(seq), 0) + 1, $1, $2, $3, $4, $5, $6, $7, $8, $9 FROM listing_feed
        RETURNING seq
        """,
        event, product_id, product_code, revision, revision_digest,
        product["certificate"] if event == "published" else None, metadata, reason, at,
    )  # fmt: skip
    return seq


async def items_after(conn: Executor, after: int, limit: int) -> list[FeedItem]:
    """Feed rows after ``after``, each published one with its seller's newest member credential."""
    rows = await conn.fetch(
        """
        SELECT f.*, (SELECT c.jws FROM member_credentials c
                     WHERE c.org_id = p.seller_org_id AND c.expires_at > f.at
                     ORDER BY c.issued_at DESC LIMIT 1) AS credential
        FROM listing_feed f JOIN products p ON p.id = f.product_id
        WHERE f.seq > $1 ORDER BY f.seq LIMIT $2
        """,
        after,
        limit,
    )
    return [
        FeedItem(
            seq=row["seq"],
            event=row["event"],
            product_code=row["product_code"],
            at=row["at"],
            revision=row["revision"],
            revision_digest=row["revision_digest"],
            certificate=row["certificate"],
            metadata=row["metadata"],
            credential=row["credential"] if row["event"] == "published" else None,
            reason=row["reason"],
        )
        for row in rows
    ]


def sign_page(
    settings: Settings, key: SigningKey, after: int, items: list[FeedItem], at: datetime
) -> FeedPage:
    next_after = items[-1].seq if items else after
    claims = FeedClaims(
        iss=settings.exchange_code,
        after=after,
        items=items,
        next_after=next_after,
        iat=int(at.timestamp()),
    )
    jws = key.sign_compact(msgspec.to_builtins(claims), typ=FEED_TYPE)
    return FeedPage(jws=jws, next_after=next_after, count=len(items))


def feed_claims(claims: dict[str, Any]) -> FeedClaims:
    """The verified claims of a page as types (a malformed page is a `msgspec.ValidationError`)."""
    return msgspec.convert(claims, FeedClaims)
