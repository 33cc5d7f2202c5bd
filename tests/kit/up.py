"""A whole exchange under `dataex up` in a folder of its own, a buyer load against it, and what
a fault test checks afterwards: every executed order settled exactly once, the ledger verified.

The load is the benchmark's lean client (`benchmarks.trades`): many buyers' orders on pooled
keep-alive connections, each answer's status counted, connection errors counted by type.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks import trades as load
from exchange.platform.embedded import EmbeddedPostgres
from tests.kit.processes import clean_env, free_port


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (children, grandchildren, …), from /proc."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children[ppid].append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


class Exchange:
    """`dataex up` on its own state folder and ports; ``start`` again after a crash reuses both."""

    def __init__(self, state: Path, **env: str) -> None:
        self.state = state
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = (
            clean_env(
                DATAEX_STATE_DIR=str(state),
                DATAEX_HTTP_PORT=str(self.port),
                DATAEX_GATEWAY_PORT=str(free_port()),
                DATAEX_API_WORKERS="2",
                DATAEX_RATE_LIMIT_PER_SECOND="0",  # the load is a few buyers at hundreds/s
                DATAEX_LOG_FORMAT="json",
            )
            | env
        )
        self.process: subprocess.Popen[str] | None = None
        self.token: str | None = None
        self.output: list[str] = []

    def start(self, ready_within: float = 60.0) -> float:
        """Start and wait until ready; seconds it took. The first start's admin token is kept."""
        started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "exchange.cli", "up"], env=self.env, text=True,
            stdout=subprocess.PIPE, stderr=(self.state.parent / "up.err").open("a"),
        )  # fmt: skip
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            if match := re.search(r"(dxt_[A-Za-z0-9_-]+)", line):
                self.token = match.group(1)
            if "Ctrl-C" in line:
                break
        assert self.process.poll() is None, f"dataex up exited: {''.join(self.output)}"
        threading.Thread(target=self._drain, args=(self.process,), daemon=True).start()
        self.wait_ready(ready_within, since=started)
        return time.monotonic() - started

    def _drain(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.output.append(line)

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health/ready", timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def wait_ready(self, within: float, since: float | None = None) -> float:
        since = time.monotonic() if since is None else since
        while time.monotonic() < since + within:
            assert self.process is not None and self.process.poll() is None, (
                f"dataex up exited with {self.process and self.process.returncode}:"
                f" {''.join(self.output[-20:])}"
            )
            if self.ready():
                return time.monotonic() - since
            time.sleep(0.05)
        raise AssertionError(f"not ready within {within} s: {self.readiness()}")

    def readiness(self) -> Any:
        try:
            with urllib.request.urlopen(f"{self.url}/health/ready", timeout=2) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            return json.loads(error.read())
        except OSError as error:
            return str(error)

    def supervisor(self) -> dict[str, Any]:
        return dict(json.loads((self.state / "supervisor.json").read_text()))

    def pid_of(self, target: str) -> int:
        """The process to kill: a part (from the supervisor's status), ``api-worker`` (one of
        granian's worker processes), ``postgres`` (the postmaster) or ``nats``."""
        if target == "postgres":
            return int((self.state / "postgres/data/postmaster.pid").read_text().split()[0])
        if target == "nats":
            return int((self.state / "nats/nats.pid").read_text())
        if target == "api-worker":
            workers = descendants(self.pid_of("api"))
            assert workers, "the API part has no worker processes"
            return workers[0]
        return int(self.supervisor()["parts"][target]["pid"])

    def database_url(self) -> str:
        url = EmbeddedPostgres(self.state).live_url()
        assert url, "no live embedded PostgreSQL"
        return url

    def kill_everything(self) -> int:
        """SIGKILL to `dataex up` and every process under it at once, as a power cut would."""
        assert self.process is not None
        family = [self.process.pid, *descendants(self.process.pid)]
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=5)
        return len(family)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill_everything()

    async def ledger_verify(self) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "exchange.cli", "ledger", "verify"],
            env=self.env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip


@dataclass
class Load:
    """What the buyers saw: answers by status, failures by kind, orders accepted as executed."""

    accepted: int = 0
    statuses: collections.Counter[str] = field(default_factory=collections.Counter)
    buyer_orgs: list[str] = field(default_factory=list)


async def place_orders(
    url: str,
    admin: str,
    accepted: int,
    *,
    fault_after: int,
    fault: Callable[[], Any],
    concurrency: int = 16,
    limit_seconds: float = 120.0,
) -> Load:
    """Place orders until ``accepted`` of them were accepted and executed (201), calling
    ``fault`` once (in a thread) when ``fault_after`` were. Orders refused or lost meanwhile
    are counted, not retried: each order has its own idempotency key."""
    http = load._Http(url, concurrency, timeout=15.0)
    result = Load()
    try:
        market = await load.setup_market(http, admin, sellers=1, buyers=4)
        result.buyer_orgs = market.buyer_orgs
        orders = load._Orders.of(http, market)
        faulted: list[asyncio.Task[Any]] = []
        deadline = time.monotonic() + limit_seconds

        async def buyer(k: int) -> None:
            n = k
            while result.accepted < accepted and time.monotonic() < deadline:
                one = load.Run(started=time.perf_counter())  # what this one order met
                await load._place(http, orders, n, one, one.started)
                n += concurrency
                if one.errors:
                    result.statuses.update(one.errors)
                    await asyncio.sleep(0.05)  # the exchange is away: don't spin
                else:
                    result.statuses["HTTP 201"] += 1
                    result.accepted += 1
                if result.accepted >= fault_after and not faulted:
                    faulted.append(asyncio.create_task(asyncio.to_thread(fault)))

        await asyncio.gather(*(buyer(k) for k in range(concurrency)))
        if faulted:
            await faulted[0]
    finally:
        await http.close()
    assert result.accepted >= accepted, f"only {result.accepted} accepted: {result.statuses}"
    return result


async def settle_check(exchange: Exchange, result: Load, within: float = 60.0) -> dict[str, int]:
    """Wait until every executed order of the load has its trade reserved in the ledger, then
    check it happened exactly once per trade and that `dataex ledger verify` passes."""
    orgs = [uuid.UUID(o) for o in result.buyer_orgs]
    conn = await asyncpg.connect(exchange.database_url())
    try:
        deadline = time.monotonic() + within
        while True:
            executed = await conn.fetchval(
                "SELECT count(*) FROM orders WHERE buyer_org_id = ANY($1) AND state = 'executed'",
                orgs,
            )
            reserved = await conn.fetchrow(
                "SELECT count(*) AS entries, count(DISTINCT l.trade_id) AS trades"
                " FROM orders o JOIN trade_contracts c ON c.order_id = o.id"
                " JOIN ledger_entries l ON l.trade_id = c.id AND l.step = 'reserved'"
                " WHERE o.buyer_org_id = ANY($1)",
                orgs,
            )
            assert reserved is not None
            if reserved["trades"] >= executed or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        doubled = await conn.fetchval(
            "SELECT count(*) FROM (SELECT trade_id, step FROM ledger_entries"
            " GROUP BY trade_id, step HAVING count(*) > 1) d"
        )
        trades = await conn.fetchval(
            "SELECT count(*) FROM settlement_trades s JOIN trade_contracts c ON c.id = s.trade_id"
            " JOIN orders o ON o.id = c.order_id WHERE o.buyer_org_id = ANY($1)",
            orgs,
        )
    finally:
        await conn.close()
    assert executed >= result.accepted, (executed, result.accepted)
    assert reserved["trades"] == executed, f"{executed - reserved['trades']} trades unsettled"
    assert reserved["entries"] == executed and trades == executed and doubled == 0
    verified = await exchange.ledger_verify()
    assert verified.returncode == 0, verified.stdout + verified.stderr
    return {"executed": int(executed), "accepted": result.accepted}
