"""``/metrics`` over several processes: what each process records goes to files in
``PROMETHEUS_MULTIPROC_DIR`` and the answer sums them, whoever answers and whoever died."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from exchange.platform import exposition
from tests.kit.processes import ROOT, clean_env

# A process of the exchange recording: n requests to a route, and orders placed in groups.
RECORD = textwrap.dedent(
    """
    import sys
    from exchange.platform import metrics
    n = int(sys.argv[1])
    for _ in range(n):
        metrics.observe_request("POST", "/v1/orders", 201, 0.02)
        metrics.ORDERS_PLACED.labels("executed").inc()
    metrics.ORDER_GROUP_SIZE.observe(n)
    """
)


def record(folder, n: int) -> None:
    subprocess.run(
        [sys.executable, "-c", RECORD, str(n)],
        env=clean_env(PROMETHEUS_MULTIPROC_DIR=str(folder)), cwd=ROOT, check=True, timeout=60,
    )  # fmt: skip


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_the_processes_counts_are_summed_and_outlive_the_processes(tmp_path):
    folder = exposition.reset(tmp_path / "metrics")
    record(folder, 3)  # two processes, both gone by now
    record(folder, 5)
    level = GaugeMetricFamily("dataex_outbox_pending", "read at the scrape")
    level.add_metric([], 7)
    found = samples(exposition.render(folder, [level]).decode())
    route = (("method", "POST"), ("route", "/v1/orders"), ("status", "201"))
    assert found["dataex_http_requests_total", route] == 8
    assert found["dataex_orders_placed_total", (("state", "executed"),)] == 8
    buckets = {
        k: v for k, v in found.items() if k[0] == "dataex_http_request_duration_seconds_bucket"
    }
    assert (
        buckets[
            "dataex_http_request_duration_seconds_bucket",
            (("le", "0.025"), ("method", "POST"), ("route", "/v1/orders")),
        ]
        == 8
    )
    assert found["dataex_order_group_size_count", ()] == 2
    assert found["dataex_order_group_size_sum", ()] == 8
    assert found["dataex_outbox_pending", ()] == 7


def test_reset_empties_the_folder_of_an_earlier_run(tmp_path):
    folder = exposition.reset(tmp_path / "metrics")
    record(folder, 2)
    assert list(folder.glob("*.db"))
    exposition.reset(folder)
    assert not list(folder.glob("*.db"))
    assert (folder.stat().st_mode & 0o777) == 0o700
    assert "dataex_orders_placed_total" not in exposition.render(folder, []).decode()


def test_live_gauges_of_dead_processes_are_forgotten_and_counters_kept(tmp_path):
    folder = exposition.reset(tmp_path / "metrics")
    record(folder, 1)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    live = folder / f"gauge_livesum_{dead}.db"
    live.write_bytes(b"")
    mine = folder / f"gauge_livesum_{os.getpid()}.db"
    mine.write_bytes(b"")
    assert exposition.forget_dead(folder) == [int(dead)]
    assert not live.exists() and mine.exists()
    assert any(f.name.startswith("counter_") for f in folder.iterdir())
