"""What a room reports about work it repairs by itself, shown on ``/health/ready``.

The health check stands below every room and may not import one, so the composition root hands
it each room's report as a callable on the platform (`provide`), and the health check asks for
it by name (`report`). A report never makes the exchange "not ready": it shows what a room is
repairing, beside the checks that decide readiness.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import msgspec

from exchange.platform.context import Platform

_SHARED_KEY = "status.reports"


class SettlementStatus(msgspec.Struct, frozen=True):
    """The settlement room's reconciler: executed trades it found without a settlement outcome
    past the bound (``DATAEX_RECONCILE_AFTER_SECONDS``) and still without one, how many
    executed events it has published again in all, and up to when it has checked."""

    overdue: int
    republished_total: int
    checked_until: datetime | None


class ComputeStatus(msgspec.Struct, frozen=True):
    """The compute room's jobs not yet ended, by state: the work queue's length is ``queued``."""

    queued: int
    running: int
    checking_output: int


Report = Callable[[Platform], Awaitable[Any]]


def provide(platform: Platform, name: str, report: Report) -> None:
    """Register a room's report under ``name`` (by the composition root, at start)."""
    platform.shared.setdefault(_SHARED_KEY, {})[name] = report


async def report(platform: Platform, name: str) -> Any:
    """The report registered under ``name``, or None when no room provides it."""
    reports: dict[str, Report] = platform.shared.get(_SHARED_KEY, {})
    provider = reports.get(name)
    return None if provider is None else await provider(platform)
