"""`dataex up` as a user runs it: ready in time, stops cleanly, keeps its data."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from exchange.platform.signing import b64url, load_master_key
from tests.kit.processes import clean_env, run_dataex, server_env

pytestmark = pytest.mark.system

READY_WITHIN = 15.0
STOP_WITHIN = 5.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def processes_mentioning(text: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes() and alive(int(entry.name)):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


class Up:
    def __init__(self, state: Path, port: int, extra_env: dict[str, str] | None = None) -> None:
        env = clean_env()
        env |= {
            "DATAEX_STATE_DIR": str(state),
            "DATAEX_HTTP_PORT": str(port),
            "DATAEX_GATEWAY_PORT": str(free_port()),
            "DATAEX_LOG_FORMAT": "json",
        } | (extra_env or {})
        self.url = f"http://127.0.0.1:{port}"
        self.out = state.parent / f"{state.name}-{port}-{time.monotonic_ns()}.out"
        self.started = time.monotonic()
        with self.out.open("wb") as out, (state.parent / "up.err").open("ab") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "exchange.cli", "up"], env=env, stdout=out, stderr=err
            )

    def wait_ready(self) -> float:
        deadline = self.started + READY_WITHIN
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.out.read_text()
            try:
                with urllib.request.urlopen(f"{self.url}/health/ready", timeout=1) as response:
                    if response.status == 200:
                        return time.monotonic() - self.started
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"not ready within {READY_WITHIN}s")

    def banner(self) -> str:
        deadline = time.monotonic() + 5
        while "Ctrl-C stops everything" not in self.out.read_text():
            assert time.monotonic() < deadline, self.out.read_text()
            time.sleep(0.05)
        return self.out.read_text()

    def stop(self) -> tuple[float, set[int]]:
        family = descendants(self.process.pid)
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=STOP_WITHIN + 5)
        elapsed = time.monotonic() - started
        time.sleep(0.2)
        return elapsed, {pid for pid in family if alive(pid)}


def get(url: str, token: str) -> dict[str, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body


def test_up_runs_embedded_servers_stops_cleanly_and_keeps_its_data(tmp_path):
    state = tmp_path / "state"
    first = Up(state, free_port())
    try:
        ready_after = first.wait_ready()
        banner = first.banner()
    finally:
        elapsed, survivors = first.stop()
    assert ready_after < READY_WITHIN
    assert first.process.returncode == 0
    assert elapsed < STOP_WITHIN, f"took {elapsed:.2f}s to stop"
    assert survivors == set(), f"left behind: {survivors}"
    assert processes_mentioning(str(state)) == []
    token = re.search(r"dxt_[0-9a-f]{32}_\S+", banner)
    assert token, banner
    assert "/schema" in banner and str(state.resolve()) in banner
    assert (state / "postgres" / "data" / "PG_VERSION").exists()
    assert "sync_interval: always" in (state / "nats" / "nats.conf").read_text()

    second = Up(state, free_port())
    try:
        second.wait_ready()
        banner = second.banner()
        me = get(f"{second.url}/v1/me", token[0])
    finally:
        _, survivors = second.stop()
    assert "dxt_" not in banner  # the admin token is printed on first start only
    assert me["organisation"]["is_operator"] is True
    assert survivors == set()


def test_up_with_urls_set_starts_no_embedded_server(tmp_path, servers):
    settings = servers.settings
    state = tmp_path / "state"
    # The test run's database holds keys sealed under the run's master key: a deployment shares
    # it (the gateway opens the delivery key at start and refuses to run without it).
    master = b64url(load_master_key(settings.state_dir))
    up = Up(state, free_port(), server_env(settings, state) | {"DATAEX_MASTER_KEY": master})
    try:
        up.wait_ready()
        banner = up.banner()
    finally:
        _, survivors = up.stop()
    assert "external" in banner and "embedded" not in banner
    assert not (state / "postgres").exists()
    assert not (state / "nats").exists()
    assert survivors == set()


def test_a_port_in_use_is_refused_with_a_clear_message(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = clean_env(DATAEX_STATE_DIR=str(tmp_path), DATAEX_HTTP_PORT=str(port),
                        DATAEX_GATEWAY_PORT=str(free_port()))  # fmt: skip
        result = run_dataex("up", env=env, timeout=30)
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use" in result.stderr


def test_help_explains_each_command():
    result = subprocess.run(
        [sys.executable, "-m", "exchange.cli", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("up", "serve", "migrate", "admin"):
        assert re.search(rf"^\s+{command}\s+\S", result.stdout, re.M), result.stdout


def test_migrate_and_admin_bootstrap_commands_work_on_configured_servers(tmp_path, servers):
    env = server_env(servers.settings, tmp_path)
    migrate = run_dataex("migrate", env=env)
    assert migrate.returncode == 0, migrate.stderr
    assert "migrations applied" in migrate.stdout
    tokens = []
    for _ in range(2):
        result = run_dataex("admin", "bootstrap", env=env)
        assert result.returncode == 0, result.stderr
        token = re.search(r"dxt_\S+", result.stdout)
        assert token, result.stdout
        tokens.append(token[0])
    assert tokens[0] != tokens[1]  # each call issues a new token for the same operator


def test_keys_rotate_adds_a_key_and_keeps_the_old_one_published(tmp_path, servers):
    env = server_env(servers.settings, tmp_path)
    kids = []
    for _ in range(2):
        result = run_dataex("keys", "rotate", env=env)
        assert result.returncode == 0, result.stderr
        kid = re.search(r"new current signing key (\S+)", result.stdout)
        assert kid, result.stdout
        kids.append(kid[1])
    assert kids[0] != kids[1]
    assert oct((tmp_path / "master.key").stat().st_mode & 0o777) == "0o600"
