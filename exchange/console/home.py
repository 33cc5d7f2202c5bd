"""The console's first page: what waits for staff now, and how trading and settlement stand.

Each figure comes from a small read its room exports (the docstrings there say which index it
uses): the review queue's depth (review), products by state (listings), orders placed today
(orders), trades registered today, dead letters and settlement's lag (settlement).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Final

from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.response import Template

from contracts.orders.service import OrderService
from exchange.console.review import age_class, age_text
from exchange.console.web import ROOT, render
from exchange.listings.service import ListingService
from exchange.platform.context import Platform
from exchange.review.service import ReviewService
from settlement import figures

# The exchange's day: Asia/Shanghai, which has kept +08:00 without daylight saving since 1991.
EXCHANGE_DAY: Final = timezone(timedelta(hours=8), "Asia/Shanghai")


def start_of_day(at: datetime) -> datetime:
    """Midnight, Asia/Shanghai, of the day holding ``at`` (in UTC)."""
    local = at.astimezone(EXCHANGE_DAY)
    return local.replace(hour=0, minute=0, second=0, microsecond=0).astimezone(UTC)


def seconds_text(t: Any, seconds: float) -> str:
    """A short duration: seconds under two minutes, then as the queue shows ages."""
    if seconds < 120:
        return str(t("dashboard.seconds", n=f"{seconds:.1f}" if seconds < 10 else int(seconds)))
    minutes = int(seconds // 60)
    if minutes < 48 * 60:
        return str(t("age.minutes", n=minutes) if minutes < 60 else t("age.hours", n=minutes // 60))
    return str(t("age.days", n=minutes // (24 * 60)))


class HomePage(Controller):
    path = ROOT

    @get("/")
    async def dashboard(
        self,
        request: Request[Any, Any, Any],
        reviews: NamedDependency[ReviewService],
        listings: NamedDependency[ListingService],
        orders: NamedDependency[OrderService],
        platform: NamedDependency[Platform],
    ) -> Template:
        now = reviews.clock.now()
        depth = await reviews.depth()
        oldest = min((at for _, _, at in depth), default=None)
        today = start_of_day(now)
        lag = await figures.lag(platform)
        return render(
            request,
            "dashboard.html",
            depth=depth,
            open_cases=sum(n for _, n, _ in depth),
            oldest=oldest,
            oldest_class=age_class(oldest, now) if oldest else None,
            oldest_text=(lambda t: age_text(t, oldest, now)) if oldest else None,
            products=await listings.count_by_state(),
            today=today,
            day_zone=EXCHANGE_DAY,
            orders_today=await orders.placed_since(today),
            trades_today=await figures.registered_since(platform.pool, today),
            dead=await figures.dead_letter_counts(platform.pool),
            lag=lag,
            since=lambda t, at: seconds_text(t, max(0.0, (now - at).total_seconds())),
            duration=seconds_text,
        )
