"""``GET /metrics``: Prometheus text for staff: what the processes counted (here the one
in-process app's) and the levels read fresh at each scrape from what the rooms and `dataex up`
record. Several processes: tests/unit/test_exposition.py and tests/integration/test_metrics_up.py."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from exchange.platform import exposition
from tests.kit.api import bearer
from tests.kit.documents import metadata
from tests.kit.market import auto_accept_product, order_body, place, submit


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


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def by_labels(text: str) -> Samples:
    """Every sample, keyed by its name and its labels (sorted)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(client, token) -> Samples:
    response = await client.get("/metrics", headers=bearer(token))
    assert response.status_code == 200, response.text
    return by_labels(response.text)


async def test_placing_an_order_moves_the_counters_and_the_levels(
    client, settings, pool, admin_token, trade
):
    product_id = await auto_accept_product(client, trade)  # one listing decision (review)
    before = await scrape(client, admin_token)
    response = await place(client, trade, order_body(product_id))
    assert response.status_code == 201 and response.json()["state"] == "executed"
    after = await scrape(client, admin_token)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("dataex_orders_placed_total", state="executed") == 1
    assert moved("dataex_policy_decisions_total", subject="order", outcome="allow") == 1
    route = {"method": "POST", "route": "/v1/orders"}
    assert moved("dataex_http_requests_total", status="201", **route) == 1
    assert moved("dataex_http_request_duration_seconds_count", **route) == 1
    assert moved("dataex_http_request_duration_seconds_bucket", le="+Inf", **route) == 1
    # By the route's template, never the raw path
    await client.get(f"/v1/orders/{response.json()['id']}", headers=bearer(trade["buyer"]))
    templates = {
        k[1] for k in await scrape(client, admin_token) if k[0] == "dataex_http_requests_total"
    }
    routes = {dict(labels)["route"] for labels in templates}
    assert "/v1/orders/{order_id}" in routes
    assert not any(response.json()["id"] in r for r in routes)
    # Levels read at the scrape: the executed trade's event waits for the relay ...
    assert after["dataex_outbox_pending", ()] >= 1
    assert after["dataex_outbox_oldest_pending_age_seconds", ()] >= 0
    assert after["dataex_ledger_entries", ()] == 0
    assert after["dataex_settlement_failures", ()] == 0
    # ... and the listing that was reviewed left no case open; every kind is shown
    for kind in ("listing", "order", "legal_prohibition", "exporter_status"):
        assert after["dataex_review_queue_depth", (("kind", kind),)] == 0
        assert after["dataex_review_queue_oldest_age_seconds", (("kind", kind),)] == 0


async def test_the_review_queue_depth_and_age_by_kind(client, admin_token, market, clock):
    await submit(client, market["seller"], metadata())
    found = await scrape(client, admin_token)
    assert found["dataex_review_queue_depth", (("kind", "listing"),)] == 1
    assert found["dataex_review_queue_depth", (("kind", "order"),)] == 0
    assert found["dataex_review_queue_oldest_age_seconds", (("kind", "listing"),)] >= 0


async def test_metrics_stay_staff_only(client, trade):
    assert (await client.get("/metrics")).status_code == 401
    assert (await client.get("/metrics", headers=bearer(trade["buyer"]))).status_code == 403


async def test_a_level_that_cannot_be_read_is_left_out_and_the_rest_answers(client, admin_token):
    async def away(platform):
        raise ConnectionRefusedError("PostgreSQL is away")

    exposition.provide(client.app.state.platform, "broken", away)
    with capture_logs() as logs:
        found = await scrape(client, admin_token)
    assert found["dataex_ledger_entries", ()] == 0  # the other readers still answered
    assert any(name == "dataex_http_requests_total" for name, _ in found)
    [failed] = [e for e in logs if e["event"] == "metrics_gauges_failed"]
    assert failed["reader"] == "broken" and "PostgreSQL is away" in failed["error"]
