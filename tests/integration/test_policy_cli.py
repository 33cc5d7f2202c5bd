"""`dataex policy replay|publish` as a user runs them, on the run's database (`evaluate` and
`check`: tests/unit/test_policy_cli.py)."""

from __future__ import annotations

import json

from tests.kit.processes import ROOT, run_dataex, server_env


def test_publish_and_replay_on_the_database(tmp_path, settings):
    env = server_env(settings, tmp_path)
    source = (ROOT / "schemas/policy/2026.1.toml").read_text(encoding="utf-8")
    candidate = tmp_path / "2026.2.toml"
    candidate.write_text(source.replace('version = "2026.1"', 'version = "2026.2"'))
    replay = run_dataex("policy", "replay", "--file", str(candidate), env=env)
    assert replay.returncode == 0, replay.stderr
    assert json.loads(replay.stdout)["list_version"] == "2026.2"
    first = run_dataex(
        "policy",
        "publish",
        str(candidate),
        "--effective-from",
        "2999-01-01T00:00:00+08:00",
        env=env,
    )
    assert first.returncode == 0, first.stderr
    assert "list 2026.2 published" in first.stdout
    again = run_dataex(
        "policy",
        "publish",
        str(candidate),
        "--effective-from",
        "2999-01-01T00:00:00+08:00",
        env=env,
    )
    assert "already published (identical)" in again.stdout
    candidate.write_text(candidate.read_text().replace("核心数据实行", "核心数据一律实行"))
    conflict = run_dataex("policy", "publish", str(candidate), env=env)
    assert conflict.returncode == 2
    assert "immutable" in conflict.stderr
