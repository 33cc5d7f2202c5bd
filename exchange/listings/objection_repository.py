"""The SQL of objections to a registration (`listing_objections`, owned by the listing room).

Reads join the product for its code, seller and state; writes happen in the caller's
transaction (`exchange.listings.objections` holds the rules).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import msgspec

from exchange.listings.schemas import ListingObjection, PublicListingObjection
from exchange.listings.states import ObjectionClaim, ObjectionState
from exchange.platform.db import Connection, Executor

_SELECT = (
    "SELECT o.*, p.product_code, p.seller_org_id, p.state AS listing_state"
    " FROM listing_objections o JOIN products p ON p.id = o.product_id"
)


def objection(row: Any, note: str | None = None) -> ListingObjection:
    decided = row["state"] != "registered"
    return ListingObjection(
        id=row["id"], product_id=row["product_id"], product_code=row["product_code"],
        seller_org_id=row["seller_org_id"], claimant_org_id=row["claimant_org_id"],
        claim=row["claim"], statement=row["statement"],
        evidence_sha256=list(row["evidence_sha256"]), state=row["state"],
        registered_at=row["registered_at"], suspended_listing=row["suspended_listing"],
        suspension_reason=row["suspension_reason"], suspended_at=row["suspended_at"],
        decided_at=row["decided_at"], outcome=row["state"] if decided else None,
        decision_reason=row["decision_reason"], listing_state=row["listing_state"], note=note,
    )  # fmt: skip


async def insert(
    conn: Connection,
    *,
    objection_id: uuid.UUID,
    product_id: uuid.UUID,
    claimant_org_id: uuid.UUID,
    claim: ObjectionClaim,
    statement: str,
    evidence_sha256: Sequence[str],
    at: datetime,
) -> bool:
    """A registered objection; False when the claimant has one open for the product already."""
    inserted = await conn.fetchval(
        "INSERT INTO listing_objections (id, product_id, claimant_org_id, claim, statement,"
        " evidence_sha256, state, registered_at) VALUES ($1, $2, $3, $4, $5, $6, 'registered', $7)"
        " ON CONFLICT (product_id, claimant_org_id) WHERE state = 'registered' DO NOTHING"
        " RETURNING true",
        objection_id, product_id, claimant_org_id, claim, statement, list(evidence_sha256), at,
    )  # fmt: skip
    return bool(inserted)


async def fetch(conn: Executor, objection_id: uuid.UUID, *, lock: bool = False) -> Any:
    """The objection with its product's code, seller and state; None when there is none.
    ``lock``: the objection's row and the product's, in that order (`FOR UPDATE`)."""
    suffix = " FOR UPDATE OF o, p" if lock else ""
    return await conn.fetchrow(f"{_SELECT} WHERE o.id = $1{suffix}", objection_id)


async def open_one(conn: Executor, product_id: uuid.UUID, claimant_org_id: uuid.UUID) -> Any:
    """The claimant's open objection to the product, if any."""
    return await conn.fetchrow(
        "SELECT id FROM listing_objections"
        " WHERE product_id = $1 AND claimant_org_id = $2 AND state = 'registered'",
        product_id, claimant_org_id,
    )  # fmt: skip


async def mark_suspended(
    conn: Connection, objection_id: uuid.UUID, reason: str, at: datetime
) -> None:
    await conn.execute(
        "UPDATE listing_objections SET suspended_listing = true, suspension_reason = $2,"
        " suspended_at = $3 WHERE id = $1",
        objection_id, reason, at,
    )  # fmt: skip


async def decide(
    conn: Connection, objection_id: uuid.UUID, state: ObjectionState, reason: str, at: datetime
) -> None:
    await conn.execute(
        "UPDATE listing_objections SET state = $2, decision_reason = $3, decided_at = $4"
        " WHERE id = $1",
        objection_id, state, reason, at,
    )  # fmt: skip


async def others_holding(conn: Executor, product_id: uuid.UUID, objection_id: uuid.UUID) -> int:
    """How many other open objections hold the product's listing suspended."""
    held: int = await conn.fetchval(
        "SELECT count(*) FROM listing_objections WHERE product_id = $1 AND id <> $2"
        " AND state = 'registered' AND suspended_listing",
        product_id, objection_id,
    )  # fmt: skip
    return held


async def by_state(
    conn: Executor,
    states: Sequence[ObjectionState] | None,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
    product_id: uuid.UUID | None = None,
) -> list[ListingObjection]:
    """Objections (in one of ``states``, or all; of one product, or all), oldest first,
    keyset on ``registered_at, id``."""
    rows = await conn.fetch(
        f"{_SELECT} WHERE ($1::text[] IS NULL OR o.state = ANY($1::text[]))"
        " AND ($2::timestamptz IS NULL OR (o.registered_at, o.id) > ($2, $3::uuid))"
        " AND ($5::uuid IS NULL OR o.product_id = $5)"
        " ORDER BY o.registered_at, o.id LIMIT $4",
        list(states) if states is not None else None, after[0] if after else None,
        after[1] if after else None, limit, product_id,
    )  # fmt: skip
    return [objection(row) for row in rows]


async def public_for(conn: Executor, product_id: uuid.UUID) -> list[PublicListingObjection]:
    """The product's objections as its public status shows them, oldest first: no claimant,
    no statement, no evidence."""
    rows = await conn.fetch(
        "SELECT id, claim, state, suspended_listing, registered_at, decided_at,"
        " CASE WHEN state = 'registered' THEN NULL ELSE state END AS outcome, decision_reason"
        " FROM listing_objections WHERE product_id = $1 ORDER BY registered_at, id",
        product_id,
    )
    return [msgspec.convert(dict(row), PublicListingObjection) for row in rows]
