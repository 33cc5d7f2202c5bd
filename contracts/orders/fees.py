"""The exchange's fee schedule: basis points of the price with a minimum, per plan or default.

Rounding: the fee is ``price * bps / 10,000`` rounded half up to whole fen, then raised to the
minimum; a free trade (price 0) pays no fee. The rule in effect when the order is placed is the
one written into the contract, so a later change never alters an agreed fee. Rows are never
changed: a new row with a later ``effective_from`` supersedes; a plan's own rule wins over the
default; with no row at all the built-in default applies (100 bps, minimum 100 fen).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec

from exchange.platform.db import Connection, Executor
from exchange.platform.money import fen

DEFAULT_BPS = 100
DEFAULT_MIN_FEN = 100


class FeeRule(msgspec.Struct, frozen=True):
    bps: int
    min_fen: int
    scope: str  # "default", "built-in" or "<product id>/<plan id>"
    effective_from: datetime | None = None


class FeeScheduleIn(msgspec.Struct, forbid_unknown_fields=True):
    """A new rule; without product_id and plan_id it is the default for every plan."""

    bps: Annotated[int, msgspec.Meta(ge=0, le=10_000)]
    min_fen: Annotated[int, fen(le=10**12)]
    product_id: uuid.UUID | None = None
    plan_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)] | None = None
    effective_from: datetime | None = None


BUILT_IN = FeeRule(DEFAULT_BPS, DEFAULT_MIN_FEN, "built-in")


def fee_fen(price: int, rule: FeeRule = BUILT_IN) -> int:
    """``rule.bps`` of the price, half up, at least ``rule.min_fen``; nothing on a free trade."""
    if price == 0:
        return 0
    return max(rule.min_fen, (price * rule.bps + 5_000) // 10_000)


async def rule_for(conn: Executor, product_id: uuid.UUID, plan_id: str, at: datetime) -> FeeRule:
    """The rule in effect at ``at`` for a plan: its own, else the default, else built-in."""
    row = await conn.fetchrow(
        "SELECT bps, min_fen, product_id, plan_id, effective_from FROM fee_schedules"
        " WHERE effective_from <= $3 AND ((product_id = $1 AND plan_id = $2)"
        " OR product_id IS NULL) ORDER BY product_id IS NULL, effective_from DESC, id DESC"
        " LIMIT 1",
        product_id, plan_id, at,
    )  # fmt: skip
    return rule_from(row)


def rule_from(row: Any, prefix: str = "") -> FeeRule:
    """The rule in a fee_schedules row (columns named ``prefix`` + column; all NULL: none)."""
    if row is None or row[prefix + "bps"] is None:
        return BUILT_IN
    product_id, plan_id = row[prefix + "product_id"], row[prefix + "plan_id"]
    scope = "default" if product_id is None else f"{product_id}/{plan_id}"
    return FeeRule(
        row[prefix + "bps"], row[prefix + "min_fen"], scope, row[prefix + "effective_from"]
    )


async def add_rule(conn: Connection, data: FeeScheduleIn, at: datetime, by: str) -> FeeRule:
    effective = data.effective_from or at
    await conn.execute(
        "INSERT INTO fee_schedules (product_id, plan_id, bps, min_fen, effective_from,"
        " created_at, created_by) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        data.product_id, data.plan_id, data.bps, data.min_fen, effective, at, by,
    )  # fmt: skip
    scope = "default" if data.product_id is None else f"{data.product_id}/{data.plan_id}"
    return FeeRule(data.bps, data.min_fen, scope, effective)


async def rules(conn: Executor, at: datetime) -> list[FeeRule]:
    """Every rule in effect now (the newest per scope) and those scheduled for later."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (product_id, plan_id) bps, min_fen, product_id, plan_id,"
        " effective_from FROM fee_schedules WHERE effective_from <= $1"
        " ORDER BY product_id, plan_id, effective_from DESC, id DESC",
        at,
    )
    later = await conn.fetch(
        "SELECT bps, min_fen, product_id, plan_id, effective_from FROM fee_schedules"
        " WHERE effective_from > $1 ORDER BY effective_from, id",
        at,
    )
    found = [
        FeeRule(r["bps"], r["min_fen"],
                "default" if r["product_id"] is None else f"{r['product_id']}/{r['plan_id']}",
                r["effective_from"])
        for r in [*rows, *later]
    ]  # fmt: skip
    if not any(r.scope == "default" and r.effective_from and r.effective_from <= at for r in found):
        found.insert(0, BUILT_IN)
    return found
