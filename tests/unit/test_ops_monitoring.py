"""``ops/prometheus.yml`` and ``ops/alerts.yml``: well-formed, every alert explained in the
runbook, every metric they use one the exchange exposes and the README documents. Prometheus'
own checker runs too where it is installed (Debian: ``apt-get install prometheus``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml  # PyYAML: a dependency of litestar

from exchange.platform import metrics

ROOT = Path(__file__).resolve().parents[2]
OPS = ROOT / "ops"
PROMETHEUS = yaml.safe_load((OPS / "prometheus.yml").read_text(encoding="utf-8"))
ALERTS = yaml.safe_load((OPS / "alerts.yml").read_text(encoding="utf-8"))
RULES = [rule for group in ALERTS["groups"] for rule in group["rules"]]
RUNBOOK = (OPS / "RUNBOOK.md").read_text(encoding="utf-8")
README = (ROOT / "README.md").read_text(encoding="utf-8")
OBSERVABILITY = README.split("## Observability", 1)[1].split("\n## ", 1)[0]
_SUFFIXES = re.compile(r"_(total|bucket|count|sum)$")


def documented() -> set[str]:
    """The metrics the README's table lists (names as exposed, without sample suffixes)."""
    return {
        _SUFFIXES.sub("", name)
        for name in re.findall(r"^\| `(dataex_[a-z_]+)`", OBSERVABILITY, re.MULTILINE)
    }


def test_the_scrape_job_reads_metrics_with_a_token_from_a_file():
    [job] = [j for j in PROMETHEUS["scrape_configs"] if j["job_name"] == "dataex"]
    assert job["metrics_path"] == "/metrics"
    assert job["authorization"]["type"] == "Bearer"
    assert "credentials_file" in job["authorization"]  # never the token itself in the file
    assert PROMETHEUS["rule_files"] == ["alerts.yml"]


@pytest.mark.parametrize("rule", RULES, ids=[r["alert"] for r in RULES])
def test_each_alert_is_explained_in_the_runbook(rule):
    assert rule["labels"]["severity"] in ("page", "ticket")
    assert rule["annotations"]["summary"]
    anchor = rule["annotations"]["runbook"].split("#", 1)[1]
    headings = {line[3:].strip().lower() for line in RUNBOOK.splitlines() if line.startswith("## ")}
    assert anchor == rule["alert"].lower() and anchor in headings


def test_alerts_use_only_documented_metrics():
    used = {
        _SUFFIXES.sub("", name)
        for rule in RULES
        for name in re.findall(r"\bdataex_[a-z_]+", rule["expr"])
    }
    assert used and used <= documented(), used - documented()


def test_every_metric_a_process_records_is_documented():
    recorded = {
        _SUFFIXES.sub("", m._name)  # prometheus_client keeps a counter's name without _total
        for m in vars(metrics).values()
        if hasattr(m, "_name") and hasattr(m, "_type")
    }
    assert len(recorded) == 13
    assert recorded <= documented(), recorded - documented()


PROMTOOL = shutil.which("promtool")


def test_promtool_accepts_the_configuration_and_the_rules(tmp_path):
    if PROMTOOL is None:
        # CI fetches it (.ci/run) and must run this test; elsewhere it is optional.
        if os.environ.get("DATAEX_REQUIRE_PROMTOOL") == "1":
            pytest.fail("promtool is required here (DATAEX_REQUIRE_PROMTOOL=1) and not on PATH")
        pytest.skip("promtool not installed (Debian package: prometheus)")
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(OPS / name, tmp_path / name)
    (tmp_path / "dataex.token").write_text("dxt_example_token\n")  # the file the job names
    checked = subprocess.run(
        [PROMTOOL, "check", "config", str(tmp_path / "prometheus.yml")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(RULES)} rules found" in checked.stdout + checked.stderr
