"""`dataex up` keeps the exchange running: it restarts a part that dies and an embedded server
that dies, and stops only on a crash loop.

- A part (API, relay, settlement worker, delivery worker, gateway) that exits is restarted after
  a backoff that doubles with each death in the last minute (0.25 s, 0.5 s, … up to 8 s). Its
  process group is killed first, so nothing of the dead part (granian's workers) holds its port.
- Five deaths of one part within a minute is a crash loop: the exchange stops with a message
  naming the part, and `dataex up` exits 1.
- Deaths while an embedded server is down, or within `OUTAGE_GRACE_SECONDS` after it came
  back, are the server's fault, not the part's: they are restarted but not counted.
- An embedded PostgreSQL or NATS that dies is started again on the same socket / port, so the
  parts' pools and clients reconnect to the addresses they know (PostgreSQL replays its WAL
  first). Five failed starts in a row stop the exchange.

Every change is written to the status file the API reads for ``/health/ready``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from exchange.platform.embedded import EmbeddedServerError
from exchange.platform.exposition import forget_dead
from exchange.platform.logging import get_logger
from exchange.platform.settings import Settings
from exchange.platform.supervision import (
    PartStatus,
    ServerStatus,
    SupervisorStatus,
    write_status,
)

log = get_logger("dataex.supervisor")

CRASH_LOOP_DEATHS = 5
CRASH_LOOP_WINDOW_SECONDS = 60.0
OUTAGE_GRACE_SECONDS = 15.0
SERVER_START_ATTEMPTS = 5
FIRST_BACKOFF_SECONDS = 0.25
MAX_BACKOFF_SECONDS = 8.0


def _answers(host: str, port: int) -> bool:
    """Whether something accepts connections on ``host:port`` (within 0.2 s)."""
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class Server(Protocol):
    def exited(self) -> int | None: ...

    def restart(self, timeout: float = ...) -> object: ...


Spawn = Callable[[str, Settings], "subprocess.Popen[bytes]"]


class CrashLoop(RuntimeError):
    """A part or a server keeps dying; the message says which and what was seen."""


@dataclass
class _Part:
    name: str
    process: subprocess.Popen[bytes] | None = None
    deaths: deque[float] = field(default_factory=deque)  # counted deaths, monotonic times
    due: float | None = None  # when a restart is due
    status: PartStatus = field(default_factory=lambda: PartStatus(state="starting"))


class Supervisor:
    def __init__(
        self,
        settings: Settings,
        parts: tuple[str, ...],
        spawn: Spawn,
        servers: dict[str, Server | None],
        status_path: Path,
    ) -> None:
        self.settings = settings
        self.spawn = spawn
        self.servers = servers
        self.status_path = status_path
        self.parts = {name: _Part(name) for name in parts}
        self.server_status = {
            name: ServerStatus(state="running" if server is not None else "external")
            for name, server in servers.items()
        }
        self.outage_until = 0.0
        host = "127.0.0.1" if settings.http_host in ("0.0.0.0", "::") else settings.http_host  # noqa: S104
        self.ports = {"api": (host, settings.http_port), "gateway": (host, settings.gateway_port)}

    # -- the parts ------------------------------------------------------------------------

    def start_all(self) -> None:
        for part in self.parts.values():
            self._start(part)
        self.write()

    def processes(self) -> dict[str, subprocess.Popen[bytes]]:
        return {p.name: p.process for p in self.parts.values() if p.process is not None}

    def _start(self, part: _Part) -> None:
        part.process = self.spawn(part.name, self.settings)
        part.due = None
        # A server part counts once its port answers; a worker once its process runs (the
        # API then also waits for the worker's first heartbeat: see exchange.health).
        part.status.state = "starting" if part.name in self.ports else "running"
        part.status.pid = part.process.pid
        if part.status.restarts:
            log.info("part_restarted", part=part.name, pid=part.process.pid,
                     restarts=part.status.restarts)  # fmt: skip

    def _died(self, part: _Part, now: float) -> None:
        assert part.process is not None
        code = part.process.returncode
        # Whatever the dead part left in its group (granian's workers) goes with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(part.process.pid, signal.SIGKILL)
        part.process = None
        if self.settings.metrics_dir is not None:  # its processes' live gauges go with them
            with contextlib.suppress(OSError):
                forget_dead(self.settings.metrics_dir)
        part.status.state = "restarting"
        part.status.pid = None
        part.status.last_exit = code
        part.status.restarts += 1
        excused = now < self.outage_until or any(
            s.state == "restarting" for s in self.server_status.values()
        )
        if excused:
            delay = 1.0
        else:
            part.deaths.append(now)
            while part.deaths and part.deaths[0] < now - CRASH_LOOP_WINDOW_SECONDS:
                part.deaths.popleft()
            if len(part.deaths) >= CRASH_LOOP_DEATHS:
                raise CrashLoop(
                    f"the {part.name} died {len(part.deaths)} times within"
                    f" {CRASH_LOOP_WINDOW_SECONDS:.0f} s (last exit code {code}): a crash loop,"
                    " so the exchange stops; see the log lines above"
                )
            delay = min(FIRST_BACKOFF_SECONDS * 2 ** (len(part.deaths) - 1), MAX_BACKOFF_SECONDS)
        part.due = now + delay
        log.error("part_exited", part=part.name, returncode=code, restart_in_s=delay,
                  during_outage=excused)  # fmt: skip

    # -- the embedded servers -------------------------------------------------------------

    def _restart_server(self, name: str, server: Server, code: int) -> None:
        status = self.server_status[name]
        status.state = "restarting"
        self.write()
        log.error("embedded_server_exited", server=name, returncode=code)
        for attempt in range(1, SERVER_START_ATTEMPTS + 1):
            started = time.monotonic()
            try:
                server.restart()
            except (EmbeddedServerError, OSError) as error:
                log.warning("embedded_server_restart_failed", server=name, attempt=attempt,
                          error=str(error))  # fmt: skip
                time.sleep(min(FIRST_BACKOFF_SECONDS * 2**attempt, MAX_BACKOFF_SECONDS))
                continue
            status.state = "running"
            status.restarts += 1
            self.outage_until = time.monotonic() + OUTAGE_GRACE_SECONDS
            log.info("embedded_server_restarted", server=name, attempt=attempt,
                     seconds=round(time.monotonic() - started, 2))  # fmt: skip
            self.write()
            return
        raise CrashLoop(
            f"the embedded {name} server died and did not start again in"
            f" {SERVER_START_ATTEMPTS} attempts; see the log lines above"
        )

    # -- one round ------------------------------------------------------------------------

    def step(self) -> None:
        """Restart what died and start what is due; raises `CrashLoop` to stop the exchange."""
        changed = False
        for name, server in self.servers.items():
            if server is not None and (code := server.exited()) is not None:
                self._restart_server(name, server, code)
                changed = True
        now = time.monotonic()
        for part in self.parts.values():
            if part.process is not None and part.process.poll() is not None:
                self._died(part, now)
                changed = True
            if part.process is None and part.due is not None and now >= part.due:
                self._start(part)
                changed = True
        if self.probe() or changed:
            self.write()

    def step_startup(self) -> None:
        """At start-up only the probes: a part that exits then is a configuration problem, which
        `dataex up` reports instead of restarting it."""
        if self.probe():
            self.write()

    def probe(self) -> bool:
        """Count a starting server part as running once its port answers; whether any did."""
        promoted = False
        for part in self.parts.values():
            if part.status.state == "starting" and _answers(*self.ports[part.name]):
                part.status.state = "running"
                promoted = True
        return promoted

    def status(self) -> SupervisorStatus:
        return SupervisorStatus(
            pid=os.getpid(),
            parts={p.name: p.status for p in self.parts.values()},
            servers=self.server_status,
        )

    def write(self) -> None:
        try:
            write_status(self.status_path, self.status())
        except OSError as error:  # readiness then says less; the exchange runs on
            log.warning("supervisor_status_unwritten", error=str(error))
