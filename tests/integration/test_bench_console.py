"""``dataex bench console`` with small parameters: every page kind is measured, client and
server time, beside its baselines, and the queue's plans are there (no timing is asserted:
speed figures belong to the benchmark, not to tests)."""

from __future__ import annotations

import argparse
import io
import json

from benchmarks.console import bench_console

QUEUE_KINDS = {
    "queue: first page", "queue: deep page (keyset cursor)", "queue: kind=order",
    "queue: rule=CAU-04", "queue: rule=CAU-05 (no listing has it)", "queue: older than a week",
    "queue: mine",
}  # fmt: skip
CASE_KINDS = {
    "case: first listing", "case: material revision (diff)", "case: four-eyes, one approval",
    "case: order", "case: staff proposal",
}  # fmt: skip
BASELINES = {"baseline: static file", "baseline: /health/live"}
QUANTILES = {"p50_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms"}


def _args(out: str) -> argparse.Namespace:
    return argparse.Namespace(cases=300, requests=30, concurrency=2, api_workers=1, url=None,
                              seed=False, out=out)  # fmt: skip


async def test_the_console_benchmark_reports_every_page_kind_beside_its_baseline(
    settings, tmp_path
):
    printed = io.StringIO()
    assert await bench_console(settings, _args(str(tmp_path)), printed) == 0, printed.getvalue()
    [written] = tmp_path.glob("console-*.json")
    report = json.loads(written.read_text())
    text = printed.getvalue()
    assert "dataex bench console: 300 open cases" in text
    assert "walked the queue" in text and "target queue page p95" in text

    assert report["open_cases"] == 300
    assert set(report["open_by_kind"]) == {"listing", "order", "legal_prohibition",
                                           "exporter_status"}  # fmt: skip
    assert report["seed"]["through_api"] == {"order": 3, "legal_prohibition": 1,
                                             "exporter_status": 1}  # fmt: skip
    shapes = report["seed"]["listing_shapes"]
    assert shapes["first listing"] and shapes["material revision"]
    assert report["walk"]["cases"] == 300 and report["walk"]["pages"] >= 6

    pages = report["pages"]
    assert set(pages) == QUEUE_KINDS | CASE_KINDS | BASELINES
    for name, page in pages.items():
        assert page["n"] == 30 and page["errors"] == {}, (name, page)
        assert set(page["client"]) == QUANTILES
        assert page["client"]["p50_ms"] <= page["client"]["p95_ms"] <= page["client"]["p99_ms"]
        assert set(page["ratio"]) == {"p50_to_static", "p95_to_static", "p50_to_health",
                                      "p95_to_health"}  # fmt: skip
        if name in BASELINES:
            assert page["group"] == "baseline" and page["server"] is None
        else:  # every console page answered with its Server-Timing
            assert page["group"] == ("queue" if name in QUEUE_KINDS else "case")
            assert set(page["server"]) == QUANTILES and page["server"]["p50_ms"] > 0
    assert pages["queue: deep page (keyset cursor)"]["distinct_urls"] >= 3
    assert pages["case: material revision (diff)"]["distinct_urls"] > 1

    assert set(report["targets"]) == {"queue page p95 server time <= 150 ms",
                                      "case page p95 server time <= 100 ms"}  # fmt: skip
    assert all(isinstance(t["met"], bool) and t["worst_p95_ms"] > 0
               for t in report["targets"].values())  # fmt: skip

    plans = report["plans"]
    assert any(name.startswith("deep page") for name in plans)
    assert {"rule=CAU-04", "kind=order", "mine", "older than a week"} <= set(plans)
    for name, entry in plans.items():
        for mode in ("custom", "generic") if name != "decisions of a page's cases" else ("custom",):
            assert entry[mode]["execution_ms"] is not None, (name, mode)
            assert any("review_" in line for line in entry[mode]["plan"]), (name, mode)
