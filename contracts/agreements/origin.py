"""Where a traded product was listed: a contract for a product recognised from a peer exchange
names both exchanges (the venue that forms the contract, and the origin that certified it), and
the product's cautious hits the origin's review cleared do not hold its orders here.

Pure functions over the facts as columns (``products.recognised_from``, ``certificate``,
``peers.name``, ``recognitions.cleared``), which the order path reads in its one statement.
"""

from __future__ import annotations

from typing import Any


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
