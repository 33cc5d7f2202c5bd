"""The console's first page: what waits for staff now."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.response import Template

from exchange.console.review import age_class, age_text
from exchange.console.web import ROOT, render
from exchange.review.service import ReviewService


class HomePage(Controller):
    path = ROOT

    @get("/")
    async def dashboard(
        self, request: Request[Any, Any, Any], reviews: NamedDependency[ReviewService]
    ) -> Template:
        now = reviews.clock.now()
        depth = await reviews.depth()
        oldest = min((at for _, _, at in depth), default=None)
        return render(
            request,
            "dashboard.html",
            depth=depth,
            open_cases=sum(n for _, n, _ in depth),
            oldest=oldest,
            oldest_class=age_class(oldest, now) if oldest else None,
            oldest_text=(lambda t: age_text(t, oldest, now)) if oldest else None,
        )
