"""Write the JSON Schemas of every event type under ``schemas/events`` (checked in, tested).

uv run python -m contracts.schemas
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import msgspec

from exchange.platform.db import SCHEMAS_DIR

EVENTS_DIR = SCHEMAS_DIR / "events"


def generators() -> dict[str, Callable[[], dict[str, object]]]:
    from contracts.orders.events import order_schema, trade_schema
    from exchange.listings.events import json_schema as listing
    from settlement.events import settlement_schema

    return {
        "dx.listing.schema.json": listing,
        "dx.trade.executed.schema.json": trade_schema,
        "dx.order.schema.json": order_schema,
        "dx.trade.settlement.schema.json": settlement_schema,
    }


def render(schema: dict[str, object]) -> str:
    return msgspec.json.format(msgspec.json.encode(schema), indent=2).decode() + "\n"


def write(directory: Path = EVENTS_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, generate in generators().items():
        path = directory / name
        path.write_text(render(generate()), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write():
        print(path)
