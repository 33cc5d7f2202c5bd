"""``GET /metrics``: Prometheus text for staff, read fresh at each scrape from what the rooms and
`dataex up` record; the reconciler's republished trades are counted there."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.kit.api import bearer


def samples(text: str) -> dict[str, float]:
    return {
        sample.name + "".join(f"{{{v}}}" for v in sample.labels.values()): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_metrics_count_the_reconcilers_republished_trades(client, admin_token, pool):
    response = await client.get("/metrics", headers=bearer(admin_token))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    before = samples(response.text)
    assert before["dataex_settlement_trades_overdue"] == 0
    # As a reconciler round that published three executed events again records it
    await pool.execute(
        "INSERT INTO settlement_reconciler (republished_total) VALUES (3) ON CONFLICT (id)"
        " DO UPDATE SET republished_total = settlement_reconciler.republished_total + 3"
    )
    after = samples((await client.get("/metrics", headers=bearer(admin_token))).text)
    assert (
        after["dataex_settlement_trades_republished_total"]
        == before["dataex_settlement_trades_republished_total"] + 3
    )
