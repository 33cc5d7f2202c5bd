"""Where a traded product was listed: a contract for a product recognised from a peer exchange
names both exchanges (the venue that forms the contract, and the origin that certified it)."""

from __future__ import annotations

from typing import Any

from exchange.platform.db import Executor


async def origin_terms(conn: Executor, product_code: str, local_code: str) -> dict[str, Any]:
    """``{"origin_exchange": {...}}`` for a recognised product, ``{}`` for a local one (so a
    local contract's document is unchanged). A local product's code starts with this exchange's
    code: it costs no query (contract drafting is on the order path)."""
    if product_code.startswith(f"{local_code}-"):
        return {}
    row = await conn.fetchrow(
        "SELECT p.recognised_from, p.certificate, peers.name FROM products p"
        " JOIN peers ON peers.code = p.recognised_from WHERE p.product_code = $1",
        product_code,
    )
    if row is None:
        return {}
    return {
        "origin_exchange": {
            "code": row["recognised_from"],
            "name": row["name"],
            "listing_certificate": row["certificate"],
        }
    }


async def cleared_at_origin(conn: Executor, product: Any, hits: list[Any]) -> list[str]:
    """Product-scope cautious hits of an order that the origin exchange's review cleared, for a
    product recognised from it at its live revision (none for a local product: no query)."""
    if product["recognised_from"] is None:
        return []
    cleared = await conn.fetchval(
        "SELECT cleared FROM recognitions WHERE product_id = $1 AND revision = $2"
        " AND outcome = 'recognised'",
        product["id"], product["live_revision"],
    )  # fmt: skip
    held = set(cleared or [])
    return [h.rule for h in hits if h.list == "cautious" and h.scope == "product"
            and h.rule in held]  # fmt: skip
