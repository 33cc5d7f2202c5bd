"""The supervisor's rules with real child processes (short Python programs standing in for the
parts): a dead part is restarted with a growing backoff, five deaths in a minute stop the
exchange with a message naming the part, deaths during a server outage are not counted, and the
status file says what runs."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from exchange import supervisor as supervision
from exchange.platform.settings import Settings
from exchange.platform.supervision import read_status
from exchange.supervisor import CrashLoop, Supervisor


def spawner(code: str):
    spawned: list[str] = []

    def spawn(part: str, _settings: Settings) -> subprocess.Popen[bytes]:
        spawned.append(part)
        return subprocess.Popen([sys.executable, "-c", code], start_new_session=True)

    return spawn, spawned


def run(sup: Supervisor, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sup.step()
        time.sleep(0.01)


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    monkeypatch.setattr(supervision, "FIRST_BACKOFF_SECONDS", 0.02)


def test_a_part_that_keeps_dying_is_a_crash_loop_that_names_it(tmp_path: Path):
    spawn, spawned = spawner("import sys; sys.exit(3)")
    sup = Supervisor(Settings(), ("relay",), spawn, {}, tmp_path / "status.json")
    sup.start_all()
    with pytest.raises(CrashLoop, match=r"the relay died 5 times within 60 s \(last exit code 3\)"):
        run(sup, 10.0)
    assert spawned == ["relay"] * 5  # started, then restarted after each of the first 4 deaths
    status = read_status(tmp_path / "status.json")
    assert status is not None and status.parts["relay"].restarts == 4
    assert status.parts["relay"].last_exit == 3


def test_the_backoff_doubles_with_each_death_in_the_window(tmp_path: Path):
    spawn, _ = spawner("import sys; sys.exit(1)")
    sup = Supervisor(Settings(), ("relay",), spawn, {}, tmp_path / "status.json")
    sup.start_all()
    delays: list[float] = []
    while len(delays) < 3:
        sup.step()
        part = sup.parts["relay"]
        if part.process is None and part.due is not None:
            delays.append(round(part.due - part.deaths[-1], 3))
            while part.process is None:
                sup.step()
                time.sleep(0.005)
        time.sleep(0.005)
    assert delays == [0.02, 0.04, 0.08]


def test_a_part_that_lives_is_left_alone_and_said_running(tmp_path: Path):
    spawn, spawned = spawner("import time; time.sleep(30)")
    sup = Supervisor(Settings(), ("relay", "settlement"), spawn, {}, tmp_path / "status.json")
    sup.start_all()
    try:
        run(sup, 0.3)
        assert spawned == ["relay", "settlement"]
        status = read_status(tmp_path / "status.json")
        assert status is not None and status.down() == []
        assert {p.state for p in status.parts.values()} == {"running"}
    finally:
        for process in sup.processes().values():
            process.kill()
            process.wait()


def test_deaths_while_a_server_restarts_do_not_count(tmp_path: Path):
    spawn, spawned = spawner("import sys; sys.exit(1)")
    sup = Supervisor(Settings(), ("relay",), spawn, {}, tmp_path / "status.json")
    sup.start_all()
    sup.outage_until = time.monotonic() + 60  # as after an embedded server came back
    run(sup, 4.5)  # restarted every 1 s, never a crash loop
    assert len(spawned) >= 4
    assert not sup.parts["relay"].deaths
    status = read_status(tmp_path / "status.json")
    assert status is not None
    relay = status.parts["relay"]
    assert relay.restarts >= 3 and relay.last_exit == 1
    assert status.down() in ([f"relay restarting (restart {relay.restarts})"], [])
