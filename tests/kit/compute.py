"""Sandbox grants for compute tests: a listed product delivered by sandbox, with a plan's
sandbox terms and a manual declaring identifiers, bounds and categories, and an active grant."""

from __future__ import annotations

import uuid
from typing import Any

from tests.kit.delivery import active_grant, executed, grant_service
from tests.kit.documents import metadata
from tests.kit.market import list_product

SANDBOX_PLAN: dict[str, Any] = {
    "id": "std", "name": "沙箱计算", "pricing": "subscription", "price_fen": 10_000,
    "free": False, "purposes": ["research"], "territory": ["CN"], "max_term_days": 365,
    "redistribution": False, "acceptance_days": 0,
    "sandbox": {
        "cpu_seconds": 2, "wall_seconds": 3, "memory_mb": 256, "pids": 16, "output_kb": 256,
        "k": 10, "epsilon_total": 1.0, "epsilon_per_job": 0.5, "max_rows": 10_000,
    },
}  # fmt: skip
FIELDS: list[dict[str, Any]] = [
    {"name": "id_number", "type": "string", "meaning": "身份证号", "sensitivity": "identifier"},
    {"name": "region", "type": "string", "meaning": "地区",
     "categories": ["north", "south", "east"]},
    {"name": "amount", "type": "float", "meaning": "金额",
     "bounds": {"lower": 0, "upper": 1000}},
]  # fmt: skip


def sandbox_document(files: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    document = metadata(delivery=["sandbox"], plans=[SANDBOX_PLAN])
    document["manual"]["fields"] = FIELDS
    document["manual"]["sample"] = {"rows": [{"region": "north", "amount": 12.5}]}
    if files:
        document["manual"]["files"] = files
    return document


async def sandbox_grant(
    client: Any, trade: dict[str, Any], pool: Any, clock: Any, settings: Any,
    files: list[dict[str, Any]] | None = None,
) -> uuid.UUID:  # fmt: skip
    """An active sandbox grant of a freshly listed product to the trade's buyer; its id."""
    product_id = await list_product(client, trade, sandbox_document(files))
    product = (await client.get(f"/v1/products/{product_id}", headers={
        "Authorization": f"Bearer {trade['seller']}"})).json()  # fmt: skip
    data = executed(
        product_id=product_id, product_code=product["product_code"] or "X", buyer_org=trade["buyer_org"],
        seller_org=trade["seller_org"], modes=("sandbox",),
    )  # fmt: skip
    return await active_grant(pool, grant_service(pool, clock, settings), data)
