"""Composition root for processes: `dataex up`, `dataex serve <part>`, migrate, bootstrap."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from exchange.platform.audit import Actor, record
from exchange.platform.bus import connect_nats, ensure_stream
from exchange.platform.clock import SystemClock
from exchange.platform.db import connect, create_pool, migrate
from exchange.platform.embedded import EmbeddedNats, EmbeddedPostgres
from exchange.platform.exposition import reset as reset_metrics
from exchange.platform.logging import get_logger
from exchange.platform.settings import Settings
from exchange.platform.statefolder import seal_state

log = get_logger("dataex.runtime")

PARTS = ("api", "relay", "settlement", "delivery", "gateway", "runner")
STOP_BUDGET_SECONDS = 2.5  # for the parts; the embedded servers get the rest of the 5 s


class StartupError(RuntimeError):
    """Something stops start-up; the message says what to do."""


@dataclass
class Servers:
    settings: Settings
    postgres: EmbeddedPostgres | None
    nats: EmbeddedNats | None

    def stop(self) -> None:
        if self.nats is not None:
            self.nats.stop(grace=1.0)
        if self.postgres is not None:
            self.postgres.stop(grace=1.5)


async def _ensure_database(postgres: EmbeddedPostgres) -> None:
    conn = await connect(postgres.url("postgres"))
    try:
        exists = await conn.fetchval(
            "SELECT 1 FROM pg_database WHERE datname = $1", postgres.database
        )
        if not exists:
            await conn.execute(f'CREATE DATABASE "{postgres.database}"')
    finally:
        await conn.close()


def start_servers(settings: Settings, *, attach: bool = False) -> Servers:
    """Start embedded PostgreSQL / NATS for whichever URL is not configured.

    ``attach``: use the embedded servers of a running `dataex up` on the same state folder
    instead of starting (which would first stop them as stale); for one-off commands."""
    state = seal_state(settings.state_dir.resolve())
    postgres = nats = None
    try:
        database_url = settings.database_url
        if database_url is None and attach:
            database_url = EmbeddedPostgres(state).live_url()
        if database_url is None:
            postgres = EmbeddedPostgres(state)
            postgres.start()
            asyncio.run(_ensure_database(postgres))
            database_url = postgres.url()
        nats_url = settings.nats_url
        if nats_url is None and attach:
            nats_url = EmbeddedNats(state).live_url()
        if nats_url is None:
            nats = EmbeddedNats(state)
            nats_url = nats.start()
    except BaseException:
        Servers(settings, postgres, nats).stop()
        raise
    return Servers(settings.with_servers(database_url, nats_url), postgres, nats)


@contextlib.contextmanager
def servers(settings: Settings) -> Iterator[Settings]:
    """The servers a one-off command needs: configured, those of a running `dataex up`, or
    embedded ones started for the command and stopped after it."""
    running = start_servers(settings, attach=True)
    try:
        yield running.settings
    finally:
        running.stop()


async def prepare(settings: Settings, *, bootstrap: str) -> str | None:
    """Migrate, provision the stream, and bootstrap an admin token.

    ``bootstrap``: "first" issues a token only when no operator exists yet; "always" always does;
    "never" does not. Returns the token, if one was issued.
    """
    assert settings.database_url and settings.nats_url
    conn = await connect(settings.database_url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    client = await connect_nats(settings.nats_url, name="dataex-migrate")
    try:
        await ensure_stream(client, settings)
    finally:
        await client.close()
    from contracts.policy.service import PolicyService
    from exchange.identity.service import IdentityService

    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        published = await PolicyService(pool, SystemClock()).ensure_initial_list(
            Actor.cli("migrate")
        )
        if published:
            log.info("policy_list_published", version=published)
        await ensure_signing_key(pool, settings)
        if bootstrap == "never":
            return None
        identity = IdentityService(pool, SystemClock())
        if bootstrap == "first" and await identity.operator_exists():
            return None
        issued, _created = await identity.bootstrap(Actor.cli("bootstrap"), settings.exchange_name)
        return issued.token
    finally:
        await pool.close()


async def policy_task(settings: Settings, args: Any) -> int:
    """``dataex policy publish|replay`` against the database (migrated first)."""
    import msgspec

    from contracts.policy.cli import INVALID, parse_instant
    from contracts.policy.service import PolicyService
    from exchange.platform.errors import DataexError

    file = Path(args.file) if args.file else None
    source = await asyncio.to_thread(file.read_text, encoding="utf-8") if file else None
    await prepare(settings, bootstrap="never")
    assert settings.database_url
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    service = PolicyService(pool, SystemClock())
    try:
        if args.policy_command == "publish":
            assert source is not None and file is not None
            when = parse_instant(args.effective_from) if args.effective_from else None
            detail, created = await service.publish(
                Actor.cli("policy publish"), source, when, file=file.name
            )
            verb = "published" if created else "already published (identical)"
            output = (
                f"list {detail.info.version} {verb}: digest {detail.info.digest},"
                f" effective from {detail.info.effective_from.isoformat()}"
            )
        else:
            report = await service.replay(await service.candidate(args.version, source))
            output = msgspec.json.format(msgspec.json.encode(report), indent=2).decode()
    except DataexError as error:
        lines = [f"dataex policy {args.policy_command}: {error.detail}"]
        lines += [f"  {e.path}: {e.message}" for e in error.errors]
        print("\n".join(lines), file=sys.stderr)
        return INVALID
    except ValueError as error:
        print(f"dataex policy {args.policy_command}: {error}", file=sys.stderr)
        return INVALID
    finally:
        await pool.close()
    print(output)
    return 0


async def ensure_signing_key(pool: Any, settings: Settings) -> None:
    from exchange.platform.signing import KeyRing, load_master_key

    ring = KeyRing(load_master_key(settings.state_dir.resolve()))
    async with pool.acquire() as conn, conn.transaction():
        kid = await ring.ensure_key(conn, SystemClock().now())
        if kid:
            await record(
                conn,
                Actor.cli("migrate"),
                at=SystemClock().now(),
                action="key.created",
                subject_type="signing_key",
                subject_id=kid,
            )
            log.info("signing_key_created", kid=kid)


async def rotate_key(settings: Settings) -> str:
    from exchange.platform.signing import KeyRing, load_master_key

    await prepare(settings, bootstrap="never")
    assert settings.database_url
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        ring = KeyRing(load_master_key(settings.state_dir.resolve()))
        async with pool.acquire() as conn, conn.transaction():
            now = SystemClock().now()
            kid = await ring.rotate(conn, now)
            await record(
                conn,
                Actor.cli("keys rotate"),
                at=now,
                action="key.rotated",
                subject_type="signing_key",
                subject_id=kid,
            )
        return kid
    finally:
        await pool.close()


def _check_port_free(host: str, port: int, variable: str = "DATAEX_HTTP_PORT") -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise StartupError(
                    f"port {port} on {host} is in use: stop what holds it or set {variable}"
                ) from error
            raise StartupError(f"cannot listen on {host}:{port}: {error}") from error


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the supervising process dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn_part(part: str, settings: Settings) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings.to_env()}
    return subprocess.Popen(
        [sys.executable, "-m", "exchange.cli", "serve", part],
        env=env,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # we decide when it stops, not the terminal's Ctrl-C
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - only calls prctl, no locks taken
    )


def stop_parts(children: dict[str, subprocess.Popen[bytes]], budget: float) -> None:
    for child in children.values():
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + budget
    for child in children.values():
        remaining = max(0.0, deadline - time.monotonic())
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=remaining)
        # Kill the whole group either way: granian's workers live in it too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=0.5)


def wait_ready(
    url: str,
    timeout: float,
    children: dict[str, subprocess.Popen[bytes]],
    probe: Callable[[], object] | None = None,
) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(child.poll() is not None for child in children.values()):
            return False
        if probe is not None:
            probe()
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(f"{url}/health/ready", timeout=1) as response,  # noqa: S310
        ):
            if response.status == 200:
                return True
        time.sleep(0.1)
    return False


def up(settings: Settings) -> int:
    """Run the whole exchange on this machine until SIGINT/SIGTERM, restarting what dies."""
    from dataclasses import replace

    from exchange.supervisor import CrashLoop, Supervisor

    stop_requested: list[int] = []

    def request_stop(signum: int, _frame: object) -> None:
        stop_requested.append(signum)

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    _check_port_free(settings.http_host, settings.http_port)
    _check_port_free(settings.http_host, settings.gateway_port, "DATAEX_GATEWAY_PORT")
    started = time.monotonic()
    lock = _lock_state_folder(settings)  # held until this process ends, however it ends
    running = start_servers(settings)
    status_path = Path(settings.state_dir).resolve() / "supervisor.json"
    # Every part writes its metrics there and /metrics sums them; emptied before any part
    # starts, since the files of an earlier run's processes would count twice.
    metrics_dir = reset_metrics(Path(settings.state_dir).resolve() / "metrics")
    supervised = replace(running.settings, supervisor_status=status_path, metrics_dir=metrics_dir)
    supervisor = Supervisor(
        supervised,
        PARTS,
        spawn_part,
        {"postgres": running.postgres, "nats": running.nats},
        status_path,
    )
    exit_code = 0
    try:
        token = asyncio.run(prepare(running.settings, bootstrap="first"))
        if stop_requested:
            return 0
        supervisor.start_all()
        # At start-up a part that exits is a configuration problem, not a crash: say so.
        if not wait_ready(
            running.settings.public_url, 15.0, supervisor.processes(), supervisor.step_startup
        ):
            failed = [
                part for part, child in supervisor.processes().items() if child.poll() is not None
            ]
            raise StartupError(
                f"the exchange did not become ready (exited: {', '.join(failed) or 'none'});"
                " see the log lines above"
            )
        _print_banner(running, token, time.monotonic() - started)
        while not stop_requested:
            try:
                supervisor.step()
            except CrashLoop as error:
                log.error("crash_loop", detail=str(error))  # noqa: TRY400 - no traceback wanted
                print(f"dataex up: {error}", file=sys.stderr, flush=True)
                exit_code = 1
                break
            time.sleep(0.1)
    finally:
        stopping = time.monotonic()
        stop_parts(supervisor.processes(), STOP_BUDGET_SECONDS)
        running.stop()
        with contextlib.suppress(OSError):
            status_path.unlink()
        log.info("stopped", seconds=round(time.monotonic() - stopping, 2))
        lock.close()
    return exit_code


def _lock_state_folder(settings: Settings) -> Any:
    """One `dataex up` per state folder: a second would take the first one's servers for stale
    and stop them. The kernel drops the lock when its holder dies, even by SIGKILL, so a
    crashed run never blocks the next."""
    import fcntl

    state = seal_state(Path(settings.state_dir).resolve())
    path = state / "up.lock"
    handle = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600), "r+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise StartupError(
            f"another `dataex up` (pid {holder}) runs on the state folder {state}:"
            " stop it first, or set DATAEX_STATE_DIR to another folder"
        ) from None
    handle.seek(0)
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _print_banner(running: Servers, token: str | None, seconds: float) -> None:
    settings = running.settings
    url = settings.public_url
    lines = [
        f"dataex is up ({seconds:.1f}s)",
        f"  API          {url}",
        f"  API docs     {url}/schema  (Swagger UI: {url}/schema/swagger)",
        f"  OpenAPI      {url}/schema/openapi.json",
        f"  health       {url}/health/ready",
        f"  gateway      http://{_host(settings)}:{settings.gateway_port}/gateway/<grant>/…",
        f"  state folder {Path(settings.state_dir).resolve()}",
        "  PostgreSQL   "
        + ("embedded, " if running.postgres else "external, ")
        + _without_password(settings.database_url or ""),
        "  NATS         "
        + ("embedded, " if running.nats else "external, ")
        + _without_password(settings.nats_url or ""),
    ]
    if token:
        lines += [
            "",
            "  Bootstrap admin token (shown once; only its hash is stored):",
            f"  {token}",
            "  Lost it? `dataex admin bootstrap` issues another.",
        ]
    lines.append("  Ctrl-C stops everything.")
    print("\n".join(lines), flush=True)


def _host(settings: Settings) -> str:
    return "127.0.0.1" if settings.http_host in ("0.0.0.0", "::") else settings.http_host  # noqa: S104


def _without_password(url: str) -> str:
    """The URL(s) with any password or NATS token as ``***`` (the credentials files are in
    the state folder; the README's configuration section says how to use them by hand)."""
    from exchange.platform.settings import redact_url

    return redact_url(url)


def serve(part: str, settings: Settings) -> int:
    """Run one part in this process (for deployments; `dataex up` runs these as children)."""
    if part == "api":
        from granian.constants import Interfaces
        from granian.server import Server

        if settings.api_workers > 1 and settings.metrics_dir is None:
            log.warning(
                "metrics_per_worker",
                detail="each API worker would answer /metrics with its own counts: set"
                " PROMETHEUS_MULTIPROC_DIR to a folder emptied before the parts start (the"
                " README's Observability; `dataex up` does it)",
            )

        Server(
            "exchange.app:create_app_from_env",
            address=settings.http_host,
            port=settings.http_port,
            interface=Interfaces.ASGI,
            workers=settings.api_workers,
            factory=True,
            log_access=False,
            workers_kill_timeout=2,
            # A worker that dies is replaced by granian; a second death within 5.5 s ends
            # the part, and `dataex up` restarts it whole.
            respawn_failed_workers=True,
        ).serve()
        return 0
    if part == "gateway":
        from exchange.delivery.gateway import serve as serve_gateway

        return serve_gateway(settings, port=settings.gateway_port, workers=settings.gateway_workers)
    from exchange.platform.worker import run_part

    if part == "relay":
        from contracts.orders.expiry import expiry_loop
        from exchange.platform.outbox import relay_loop

        async def relay_and_housekeeping(platform: Any, stop: asyncio.Event) -> None:
            await asyncio.gather(relay_loop(platform, stop), expiry_loop(platform, stop))

        asyncio.run(run_part(settings, "relay", relay_and_housekeeping))
    elif part == "settlement":
        from exchange import wiring
        from exchange.disputes.worker import deadline_loop
        from settlement.worker import settlement_loop

        async def settle(platform: Any, stop: asyncio.Event) -> None:
            service = wiring.settlement(
                platform.pool, platform.clock, platform.settings, platform.keyring
            )
            disputes = wiring.disputes(
                platform.pool, platform.clock, platform.settings, platform.keyring
            )
            await asyncio.gather(
                settlement_loop(platform, stop, service), deadline_loop(stop, disputes)
            )

        asyncio.run(run_part(settings, "settlement", settle))
    elif part == "delivery":
        from exchange import wiring
        from exchange.delivery.worker import delivery_loop

        async def deliver(platform: Any, stop: asyncio.Event) -> None:
            grants = wiring.grants(
                platform.pool, platform.clock, platform.settings, platform.keyring
            )
            await delivery_loop(platform, stop, grants, wiring.period_closer(platform))

        asyncio.run(run_part(settings, "delivery", deliver))
    elif part == "runner":
        from exchange import wiring

        async def run_jobs(platform: Any, stop: asyncio.Event) -> None:
            slots = platform.settings.runner_slots or os.cpu_count() or 1
            await wiring.runner(platform).serve(platform.nats, stop, slots)

        asyncio.run(run_part(settings, "runner", run_jobs))
    else:
        raise StartupError(f"unknown part {part!r}: one of {', '.join(PARTS)}")
    return 0
