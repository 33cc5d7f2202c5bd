"""``dataex bench delivery`` with tiny parameters: every figure is there and sane (no timing is
asserted: speed figures belong to the benchmark, not to tests)."""

from __future__ import annotations

import argparse
import io
import json

from benchmarks.delivery import bench_delivery


def _args(out: str) -> argparse.Namespace:
    return argparse.Namespace(
        connections=4, duration=0.5, rate=50.0, gateway_workers=[1], file_mb=3.0, downloads=1,
        ranges=2, samples=5, suspensions=1, out=out,
    )  # fmt: skip


def _sane(value: float | None) -> bool:
    return value is not None and value >= 0


async def test_the_delivery_benchmark_reports_every_figure_beside_its_baseline(settings, tmp_path):
    printed = io.StringIO()
    assert await bench_delivery(settings, _args(str(tmp_path)), printed) == 0
    [written] = tmp_path.glob("delivery-*.json")
    assert written.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(written.read_text())
    assert "dataex bench delivery" in printed.getvalue()

    [row] = report["calls"]["closed"]
    assert row["gateway_workers"] == 1
    for name in ("direct", "quota", "meter"):
        assert row[name]["calls"] > 0 and row[name]["calls_per_s"] > 0
        assert row[name]["refused"] == {} and row[name]["client_errors"] == {}
    for plan in ("quota", "meter"):
        assert row[plan]["ratio_to_direct"] > 0
    # The pass-through floors answered every call with the upstream's 200, beside direct calls.
    floors = report["calls"]["floor"]
    for name in ("direct", "floor", "raw_floor"):
        assert floors[name]["calls"] > 0 and floors[name]["client_errors"] == {}
        assert floors[name]["refused"] == {}
    assert floors["floor"]["ratio_to_direct"] > 0 and floors["raw_floor"]["ratio_to_direct"] > 0
    opened = report["calls"]["open"]
    for name in ("direct", "gateway"):
        assert opened[name]["n"] > 0 and opened[name]["refused"] == {}
        assert all(_sane(opened[name][q]) for q in ("p50_ms", "p95_ms", "p99_ms"))
    assert set(opened["overhead_ms"]) == {"p50_ms", "p95_ms", "p99_ms"}

    files = report["files"]
    assert len(files["whole"]["exchange_mb_per_s"]) == len(files["whole"]["static_mb_per_s"]) == 1
    assert files["whole"]["ratio"] > 0 and files["ranged"]["ratio"] > 0
    assert files["ranged"]["exchange_mb_per_s"] > 0 and files["ranged"]["static_mb_per_s"] > 0
    tokens = report["tokens"]
    assert tokens["issue"]["n"] == tokens["health_live"]["n"] == 5
    assert tokens["issue"]["refused"] == {} and _sane(tokens["issue"]["p99_ms"])
    assert _sane(tokens["health_live"]["p99_ms"])

    suspension = report["suspension"]
    for kind in ("listing", "grant"):
        [one] = suspension[kind]
        assert _sane(one["denied_after_s"]) and _sane(one["served_again_after_s"])
        assert suspension[f"{kind}_max_s"] == one["denied_after_s"]
    assert report["upload_mb_per_s"] > 0
    assert set(report["targets"]) and all(isinstance(v, bool) for v in report["targets"].values())
