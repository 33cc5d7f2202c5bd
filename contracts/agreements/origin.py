"""Where a traded product was listed: a contract for a product recognised from a peer exchange
names both exchanges (the venue that forms the contract, and the origin that certified it), and
the product's cautious hits the origin's review cleared do not hold its orders here.

The pure functions take the facts as columns (``products.recognised_from``, ``certificate``,
``peers.name``, ``recognitions.cleared``) so an order path that reads everything in one
statement can call them; the async ones read those facts themselves.
"""

from __future__ import annotations

from typing import Any

from exchange.platform.db import Executor


def origin_exchange(
    recognised_from: str | None, origin_name: str | None, certificate: str | None
) -> dict[str, Any]:
    """``{"origin_exchange": {...}}`` to merge into a contract document; ``{}`` when local (a
    local contract's document, and so its digest, is unchanged)."""
    if recognised_from is None:
        return {}
    return {
        "origin_exchange": {
            "code": recognised_from,
            "name": origin_name,
            "listing_certificate": certificate,
        }
    }


def cleared_by_origin(hits: list[Any], cleared: list[str] | None) -> list[str]:
    """The product-scope cautious hits among ``hits`` that the origin's review cleared."""
    held = set(cleared or [])
    return [h.rule for h in hits if h.list == "cautious" and h.scope == "product"
            and h.rule in held]  # fmt: skip


async def origin_terms(conn: Executor, product_code: str, local_code: str) -> dict[str, Any]:
    """`origin_exchange` for a product code. A local product's code starts with this
    exchange's code: it costs no query (contract drafting is on the order path)."""
    if product_code.startswith(f"{local_code}-"):
        return {}
    row = await conn.fetchrow(
        "SELECT p.recognised_from, p.certificate, peers.name FROM products p"
        " JOIN peers ON peers.code = p.recognised_from WHERE p.product_code = $1",
        product_code,
    )
    if row is None:
        return {}
    return origin_exchange(row["recognised_from"], row["name"], row["certificate"])


async def cleared_at_origin(conn: Executor, product: Any, hits: list[Any]) -> list[str]:
    """`cleared_by_origin` for a product row (no query for a local product)."""
    if product["recognised_from"] is None:
        return []
    cleared = await conn.fetchval(
        "SELECT cleared FROM recognitions WHERE product_id = $1 AND revision = $2"
        " AND outcome = 'recognised'",
        product["id"], product["live_revision"],
    )  # fmt: skip
    return cleared_by_origin(hits, cleared)
