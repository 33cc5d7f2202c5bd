"""What delivery meters and how usage becomes money: dimensions, milli-fen, the rounding rule.

A plan declares the dimensions it meters. Two are built in: ``requests`` (each call the gateway
forwards) and ``bytes`` (bytes actually sent: a file's ranges, an API answer's body). Any other
name is a custom unit the seller's upstream reports in the ``X-Dataex-Metering`` response header
(``rows=3,pages=2``), counted only for dimensions the plan declares. Each dimension may carry a
quota (units per grant) and a unit price in milli-fen (1/1000 fen), so a price below one fen per
unit is exact.

Rounding (stated once, used by the gateway, the billing periods and settlement): cost is kept in
milli-fen per usage record; a period's charge is ``floor(cumulative cost up to its end / 1000)``
minus the same for the period before, so the charges of a grant's periods always sum to
``floor(total cost / 1000)`` fen — rounding never bills a buyer more than it used, and never by
more than 1 fen less over the whole grant. The exchange's fee on a period is ``charge * fee_bps /
10,000`` rounded half up, taken from the seller's share (no minimum per period).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Final

import msgspec

from exchange.platform.money import fen

BUILT_IN: Final = ("requests", "bytes")
SPEND: Final = "spend"  # the spend cap as a quota dimension, in milli-fen
METERING_HEADER: Final = "x-dataex-metering"
_NAME = r"^[a-z][a-z0-9_]{0,14}$"
DimensionName = Annotated[str, msgspec.Meta(pattern=_NAME, max_length=15)]


class Dimension(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A metered dimension of a plan: its quota per grant and its price per unit."""

    name: DimensionName
    unit_price_millifen: Annotated[int, fen(le=10**12)] = 0
    quota: Annotated[int, msgspec.Meta(ge=0, le=10**15)] | None = None


def cost_millifen(units: Mapping[str, int], dimensions: Mapping[str, Dimension]) -> int:
    return sum(n * dimensions[d].unit_price_millifen for d, n in units.items() if d in dimensions)


def period_charge_fen(cost_before_millifen: int, cost_through_millifen: int) -> int:
    """The fen a period bills: whole fen reached by its end less those reached before it."""
    return cost_through_millifen // 1000 - cost_before_millifen // 1000


def fee_fen(charge_fen: int, fee_bps: int) -> int:
    return (charge_fen * fee_bps + 5_000) // 10_000


_PAIR = re.compile(r"^\s*([a-z][a-z0-9_]{0,14})\s*=\s*([0-9]{1,15})\s*$")


def parse_reported(header: str | None, declared: Mapping[str, Dimension]) -> dict[str, int]:
    """Custom units from the upstream's ``X-Dataex-Metering`` header, only those the plan
    declares (built-in dimensions are measured by the gateway, never taken from the seller).
    Malformed pairs and undeclared names are dropped."""
    if not header:
        return {}
    units: dict[str, int] = {}
    for part in header.split(","):
        match = _PAIR.match(part)
        if match is None:
            continue
        name, value = match.group(1), int(match.group(2))
        if name in declared and name not in BUILT_IN and name != SPEND:
            units[name] = units.get(name, 0) + value
    return units
