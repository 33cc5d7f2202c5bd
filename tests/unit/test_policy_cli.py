"""`dataex policy evaluate|check` as a user runs them; neither needs a server (`publish` and
`replay` on the database: tests/integration)."""

from __future__ import annotations

import json
import re

import pytest

from tests.kit.processes import ROOT, run_dataex

ROW = re.compile(r"^\| `(schemas/policy/examples/[^`]+)` \| (\w+) \| ([^|]+) \| ([^|]+) \|$", re.M)


def dataex(*args: str, stdin: str | None = None, env: dict[str, str] | None = None):
    return run_dataex(*args, stdin=stdin, env=env)


def readme_examples():
    rows = ROW.findall((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(rows) >= 4
    return rows


@pytest.mark.parametrize(("path", "decision", "rules", "route"), readme_examples())
def test_evaluate_reproduces_the_readme_examples(path, decision, rules, route):
    result = dataex("policy", "evaluate", path)
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["decision"] == decision
    expected_rules = [] if rules.strip() == "—" else [r.strip() for r in rules.split(",")]
    assert [hit["rule"] for hit in output["hits"]] == expected_rules
    actual_route = (output["cross_border"] or {}).get("route", "—")
    assert actual_route == route.strip()


def test_evaluate_reads_standard_input_and_exits_2_naming_the_bad_path():
    good = (ROOT / "schemas/policy/examples/listing-core-data.json").read_text()
    assert dataex("policy", "evaluate", "-", stdin=good).returncode == 0
    bad = json.loads(good)
    bad["product"]["source"]["kind"] = "stolen"
    result = dataex("policy", "evaluate", "-", stdin=json.dumps(bad))
    assert result.returncode == 2
    assert "$.product.source.kind" in result.stderr
    missing = dataex("policy", "evaluate", "no-such-file.json")
    assert missing.returncode == 2 and "cannot read no-such-file.json" in missing.stderr


def test_check_accepts_the_bundled_list_and_lists_every_problem_of_a_bad_one(tmp_path):
    ok = dataex("policy", "check", "schemas/policy/2026.1.toml")
    assert ok.returncode == 0, ok.stderr
    assert "8 negative and 9 cautious rules" in ok.stdout
    source = (ROOT / "schemas/policy/2026.1.toml").read_text(encoding="utf-8")
    broken = tmp_path / "2026.9.toml"
    broken.write_text(
        source.replace('id = "NEG-02"', 'id = "NEG-01"').replace(
            'field = "product.legal_prohibition"', 'field = "product.legal_prohibited"'
        )
    )
    result = dataex("policy", "check", str(broken))
    assert result.returncode == 2
    assert "2026.9.toml: rule NEG-01: id: duplicate id" in result.stderr
    assert (
        "2026.9.toml: rule NEG-08: when.field: unknown attribute 'product.legal_prohibited'"
        in result.stderr
    )
