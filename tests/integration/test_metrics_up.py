"""``/metrics`` under `dataex up` with two API workers: every scrape parses and shows the same
totals whichever worker answers it, counters move by exactly the orders placed, histograms have
their buckets, and one order's trace is found in the API's and the settlement worker's lines."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import trades as load
from exchange.platform.metrics import LATENCY_BUCKETS
from tests.kit.up import Exchange, descendants

pytestmark = pytest.mark.system

ORDERS = 240
CONNECTIONS = 16
TRACE = "5e1f2a3b4c5d6e7f8091a2b3c4d5e6f7"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def exchange(tmp_path: Path) -> Iterator[Exchange]:
    running = Exchange(tmp_path / "state")  # two API workers (the kit's default)
    assert running.env["DATAEX_API_WORKERS"] == "2"
    running.start()
    try:
        yield running
    finally:
        running.stop()


def scrape(exchange: Exchange) -> Samples:
    """One scrape on a new connection (so either worker may answer), parsed strictly."""
    request = urllib.request.Request(
        f"{exchange.url}/metrics", headers={"Authorization": f"Bearer {exchange.token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def until(exchange: Exchange, check, within: float = 60.0) -> Samples:
    deadline = time.monotonic() + within
    while True:
        samples = scrape(exchange)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.25)


async def place(exchange: Exchange) -> tuple[int, int]:
    """ORDERS orders from four buyers on CONNECTIONS connections, then one more carrying the
    traceparent; (orders answered 201, of which executed)."""
    assert exchange.token
    http = load._Http(exchange.url, CONNECTIONS, timeout=15.0)
    try:
        market = await load.setup_market(http, exchange.token, sellers=1, buyers=4)
        orders = load._Orders.of(http, market)
        answers: list[tuple[int, bytes]] = []

        async def buyer(k: int) -> None:
            for n in range(k, ORDERS, CONNECTIONS):
                key = str(uuid.uuid4()).encode()
                raw = orders.heads[n % len(orders.heads)] + key + orders.tails[0]
                answers.append(await http.send(raw))

        await asyncio.gather(*(buyer(k) for k in range(CONNECTIONS)))
        traced = (
            orders.heads[0] + str(uuid.uuid4()).encode()
            + f"\r\ntraceparent: 00-{TRACE}-{'ab' * 8}-01".encode() + orders.tails[0]
        )  # fmt: skip
        answers.append(await http.send(traced))
    finally:
        await http.close()
    created = [body for status, body in answers if status == 201]
    executed = sum(json.loads(body)["state"] == "executed" for body in created)
    return len(created), executed


def test_metrics_add_up_over_two_api_workers(exchange: Exchange) -> None:
    before = scrape(exchange)
    placed, executed = asyncio.run(place(exchange))
    assert placed == ORDERS + 1 and executed == placed

    orders_route = {"method": "POST", "route": "/v1/orders"}
    answered = dict(status="201", **orders_route)
    # The access is counted as the answer ends: wait for the last one, then every scrape,
    # whichever worker answers it, shows the same totals.
    until(exchange, lambda s: value(s, "dataex_http_requests_total", **answered) >= placed, 10)
    scrapes = [scrape(exchange) for _ in range(12)]
    for samples in scrapes:
        assert value(samples, "dataex_orders_placed_total", state="executed") == placed
        assert (
            value(samples, "dataex_policy_decisions_total", subject="order", outcome="allow")
            == placed
        )
        assert value(samples, "dataex_http_requests_total", **answered) == placed
        assert value(samples, "dataex_order_group_size_sum") == placed
    assert value(before, "dataex_orders_placed_total", state="executed") == 0

    # The latency histogram of the route: every bucket, cumulative, +Inf = count = placed.
    last = scrapes[-1]
    buckets = [
        value(last, "dataex_http_request_duration_seconds_bucket", le=str(bound), **orders_route)
        for bound in LATENCY_BUCKETS
    ]
    assert buckets == sorted(buckets) and buckets[-1] <= placed
    assert (
        value(last, "dataex_http_request_duration_seconds_bucket", le="+Inf", **orders_route)
        == placed
    )
    assert value(last, "dataex_http_request_duration_seconds_count", **orders_route) == placed
    assert value(last, "dataex_order_group_size_count") >= 1

    # Both API workers recorded requests (their own files), and the totals are their sum.
    api = exchange.pid_of("api")
    workers = [
        p for p in descendants(api) if (exchange.state / "metrics" / f"counter_{p}.db").exists()
    ]
    per_worker = {
        pid: sum(
            s.value
            for m in MultiProcessCollector.merge(
                [str(exchange.state / "metrics" / f"counter_{pid}.db")]
            )
            if m.name == "dataex_http_requests"
            for s in m.samples
        )
        for pid in workers
    }
    assert len([n for n in per_worker.values() if n > 0]) == 2, per_worker

    # Settlement, in its own process: every trade registered once, with its lag and batch.
    settled = until(
        exchange,
        lambda s: (
            value(s, "dataex_settlement_trades_registered_total", outcome="reserved") >= placed
        ),
    )
    assert value(settled, "dataex_settlement_trades_registered_total", outcome="reserved") == placed
    assert value(settled, "dataex_settlement_lag_seconds_count") == placed
    assert value(settled, "dataex_settlement_batch_size_sum") == placed
    assert value(settled, "dataex_ledger_entries") == placed
    assert value(settled, "dataex_outbox_events_published_total") >= placed
    assert value(settled, "dataex_settlement_failures") == 0
    assert value(settled, "dataex_running", process="settlement") == 1

    # The traced order, from the API's access line to the settlement worker's line.
    log = exchange.state.parent / "up.err"
    deadline = time.monotonic() + 30
    while True:
        lines = [json.loads(line) for line in log.read_text().splitlines() if TRACE in line]
        events = {line["event"] for line in lines}
        if {"request", "trade_registered"} <= events or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert {"request", "trade_registered"} <= events, lines
    assert all(line["trace_id"] == TRACE for line in lines)
