"""`dataex bench trades`: its report and chart from a run (the load itself is a benchmark)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os

from exchange import loadbench


def _args(**overrides):
    defaults = {
        "duration": 3.0,
        "warmup": 0.0,
        "concurrency": 4,
        "rate": None,
        "sellers": 1,
        "buyers": 2,
        "api_workers": 2,
        "url": None,
        "pgbench": False,
        "out": None,
    }
    return argparse.Namespace(**(defaults | overrides))


def _run():
    run = loadbench.Run(started=100.0)
    for second, (count, latency) in enumerate([(10, 0.010), (20, 0.020), (30, 0.030)]):
        for _ in range(count):
            s = run.at(100.0 + second + 0.5)
            s.accepted += 1
            s.executed += 1
            s.latencies.append(latency)
        run.at(100.0 + second + 0.5).settled = count
    run.error("HTTP 429", 101.2)
    return run


def _settled(drain_s, e2e):
    """What the ledger query returns: 60 trades settled over ``drain_s`` seconds."""
    start = dt.datetime(2026, 11, 22, tzinfo=dt.UTC)
    return {"trades": 60, "first": start, "last": start + dt.timedelta(seconds=drain_s), "e2e": e2e}


def test_the_report_counts_rates_percentiles_and_the_pgbench_ratio():
    settled = _settled(drain_s=3, e2e=[0.05, 0.08, 0.1])
    report = loadbench._report(
        _args(pgbench=True), _run(), 3.0, settled, 600.0, [("api", 10, 70.0)], 0.3
    )
    assert report["client_cpu_ms_per_order"] == 5.0  # 300 ms of the client's CPU over 60 orders
    assert report["orders_accepted"] == 60 and report["orders_accepted_per_s"] == 20.0
    assert report["contracts_executed_per_s"] == 20.0
    assert report["trades_settled_per_s"] == 20.0
    assert report["settled_per_pgbench_tps"] == round(20.0 / 600.0, 3)
    assert report["order_latency_ms"]["p50"] == 25.0  # between the 30th (20 ms) and 31st (30 ms)
    assert report["order_latency_ms"]["p99"] == 30.0
    assert report["order_to_settled_ms"] == {"p50": 50.0, "p95": 80.0, "p99": 100.0}
    assert report["errors"] == {"HTTP 429": 1}
    assert [t["accepted"] for t in report["timeline"]] == [10, 20, 30]
    assert report["timeline"][1]["errors"] == 1
    assert report["peak_rss_mib"] == [{"process": "api", "pid": 10, "mib": 70.0}]


def test_a_slow_drain_lowers_the_settled_rate():
    settled = _settled(drain_s=6, e2e=[1.0, 2.0, 3.0])
    report = loadbench._report(_args(), _run(), 3.0, settled, None, [])
    assert report["trades_settled_per_s"] == 10.0  # 60 over the 6 s it took, not the 3 s run
    assert report["pgbench_tps"] is None and report["settled_per_pgbench_tps"] is None
    assert report["client_cpu_ms_per_order"] is None  # not measured


def test_the_table_json_and_chart_are_written(tmp_path):
    settled = _settled(drain_s=3, e2e=[0.05, 0.08, 0.1])
    report = loadbench._report(_args(rate=20.0), _run(), 3.0, settled, None, [])
    out = tmp_path / "table.txt"
    with out.open("w") as handle:
        loadbench._print(report, handle)
    text = out.read_text()
    assert "open loop at 20.0/s" in text and "20.0/s" in text
    warmed = loadbench._report(_args(warmup=10.0), _run(), 3.0, settled, None, [])
    table = tmp_path / "warmed.txt"
    with table.open("w") as handle:
        loadbench._print(warmed, handle)
    assert "after 10 s warm-up" in table.read_text()
    assert "load client CPU per order" not in table.read_text()
    measured = loadbench._report(_args(), _run(), 3.0, settled, None, [], 0.3)
    with table.open("w") as handle:
        loadbench._print(measured, handle)
    assert "load client CPU per order" in table.read_text() and "5.0 ms" in table.read_text()
    json.dumps(report)  # serialisable as written
    chart = tmp_path / "chart.png"
    loadbench._chart(report, chart)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 10_000


def test_peak_rss_finds_the_processes_of_an_exchange_by_their_command_line(tmp_path):
    import subprocess
    import sys

    child = subprocess.Popen(  # a stand-in named like the relay part: only its name matters
        [sys.executable, "-c", "import time; time.sleep(30)", "serve", "relay"]
    )
    try:
        import time

        deadline = time.monotonic() + 10
        rows = []
        while not rows and time.monotonic() < deadline:
            # The session's embedded PostgreSQL and NATS are this process's children too.
            rows = [row for row in loadbench.peak_rss(os.getpid()) if row[1] == child.pid]
            time.sleep(0.05)
        assert [(label, pid) for label, pid, _ in rows] == [("relay", child.pid)]
        assert rows[0][2] > 1
    finally:
        child.kill()
        child.wait()
