"""The settlement room's levels for ``GET /metrics``, read at each scrape from PostgreSQL and
JetStream (so right whichever API process answers and however many workers settle): the
ledger's size, the failures on record for staff, and what the settlement consumer still holds."""

from __future__ import annotations

from prometheus_client.core import GaugeMetricFamily, Metric

from exchange.platform.context import Platform
from settlement.consumer import consumer_state


async def gauges(platform: Platform) -> list[Metric]:
    """``dataex_ledger_entries``, ``dataex_settlement_failures`` and, once the consumer exists,
    ``dataex_settlement_consumer_pending`` / ``…_unacknowledged``. The ledger's size is its last
    sequence number plus one (a primary-key lookup, not a count)."""
    row = await platform.pool.fetchrow(
        "SELECT (SELECT coalesce(max(seq) + 1, 0) FROM ledger_entries) AS entries,"
        " (SELECT count(*) FROM settlement_failures) AS failures"
    )
    assert row is not None
    entries = GaugeMetricFamily(
        "dataex_ledger_entries", "Entries in the registration ledger (its tree size)"
    )
    entries.add_metric([], row["entries"])
    failures = GaugeMetricFamily(
        "dataex_settlement_failures",
        "Executed-trade events the settlement worker gave up on, on record for staff"
        " (GET /v1/settlement/failures)",
    )
    failures.add_metric([], row["failures"])
    families: list[Metric] = [entries, failures]
    state = await consumer_state(platform)
    if state is not None:
        pending = GaugeMetricFamily(
            "dataex_settlement_consumer_pending",
            "Executed-trade events the settlement consumer has not handed to a worker yet",
        )
        pending.add_metric([], state[0])
        unacked = GaugeMetricFamily(
            "dataex_settlement_consumer_unacknowledged",
            "Executed-trade events handed to a worker and not acknowledged yet",
        )
        unacked.add_metric([], state[1])
        families += [pending, unacked]
    return families
