"""What the orders room attaches to a dispute over a trade: the contract it executes.

A trade's id is its contract's id, so the contract is read by the trade's id. ``contract.json``
is the contract as ``GET /v1/contracts/{id}`` shows it to its parties — the canonical document
(its digest is SHA-256 over the document's RFC 8785 JSON, so a reader can check it), the digest,
the Chinese text, the standing offer that signed for the seller, and every signature of the
digest (buyer, seller, the exchange's countersignature) — plus the trade's id, as canonical
JSON. `trade_listing` names the product and revision the trade bought, for the listing room's
evidence.
"""

from __future__ import annotations

import uuid
from typing import Final

from contracts.orders.service import read_contract
from exchange.platform.canonical import canonical_json
from exchange.platform.db import Executor
from exchange.platform.disputes import SystemEvidence

CONTRACT_TYPE: Final = "dataex.evidence.contract.v1"


async def contract_evidence(conn: Executor, trade_id: uuid.UUID) -> list[SystemEvidence]:
    """``contract.json`` of the trade; an empty list when no contract has the trade's id."""
    found = await read_contract(conn, trade_id)
    if found is None:
        return []
    document = {"type": CONTRACT_TYPE, "trade_id": str(trade_id), **found[0]}
    return [
        SystemEvidence("contract", "contract.json", "application/json", canonical_json(document))
    ]


async def trade_listing(conn: Executor, trade_id: uuid.UUID) -> tuple[uuid.UUID, int] | None:
    """The product and revision number the trade's order bought; None for an unknown trade."""
    row = await conn.fetchrow(
        "SELECT o.product_id, o.revision FROM trade_contracts c"
        " JOIN orders o ON o.id = c.order_id WHERE c.id = $1",
        trade_id,
    )
    return None if row is None else (row["product_id"], row["revision"])
