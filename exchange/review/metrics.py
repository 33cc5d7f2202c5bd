"""The review queue's levels for ``GET /metrics``, read at each scrape (so right whichever API
process answers): open cases and the age of the oldest, by kind."""

from __future__ import annotations

import typing

from prometheus_client.core import GaugeMetricFamily, Metric

from exchange.platform.context import Platform
from exchange.review.schemas import CaseKind

KINDS: tuple[str, ...] = typing.get_args(CaseKind)


async def gauges(platform: Platform) -> list[Metric]:
    """``dataex_review_queue_depth{kind}`` and ``dataex_review_queue_oldest_age_seconds{kind}``
    (0 when none is open), every kind present. An index range scan (``review_cases_queue``)."""
    rows = await platform.pool.fetch(
        "SELECT kind, count(*) AS depth,"
        " extract(epoch FROM now() - min(opened_at))::float8 AS oldest"
        " FROM review_cases WHERE state = 'open' GROUP BY kind"
    )
    found = {row["kind"]: row for row in rows}
    depth = GaugeMetricFamily(
        "dataex_review_queue_depth",
        "Review cases open (waiting or claimed), by kind",
        labels=["kind"],
    )
    oldest = GaugeMetricFamily(
        "dataex_review_queue_oldest_age_seconds",
        "Age of the oldest open review case, by kind (0: none open)",
        labels=["kind"],
    )
    for kind in KINDS:
        row = found.get(kind)
        depth.add_metric([kind], row["depth"] if row else 0)
        oldest.add_metric([kind], max(0.0, row["oldest"]) if row else 0.0)
    return [depth, oldest]
