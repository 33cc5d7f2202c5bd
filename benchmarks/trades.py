"""``dataex bench trades``: the whole exchange under load, from HTTP order to settled trade.

By default it starts a fresh exchange (`dataex up`: embedded PostgreSQL and NATS, the API with
``--api-workers`` workers, the outbox relay and the settlement worker) in a temporary state
folder and stops it after; with ``--url`` it drives an exchange already running (and reads the
database of the `dataex up` in ``DATAEX_STATE_DIR`` or the configured one).

Set-up over HTTP: sellers with a listed product each (reviewed, auto-accept standing offer),
buyers with custodial signing keys and deposits. Then buyers place orders for ``--duration``
seconds: closed loop with ``--concurrency`` requests in flight, or open loop at ``--rate``
orders per second (latency measured from each order's scheduled time, so a stall is not
hidden). Every executed contract is then settled by the worker: reserved into escrow and
registered in the ledger, which is what "settled" counts here (the trade's final posting waits
for the buyer's acceptance period). Reports orders accepted/s, contracts executed/s, trades
settled/s (from the ledger), order latency p50/p95/p99, order-to-settled latency, errors, and
the peak RSS of each process; ``--pgbench`` first runs pgbench TPC-B for 20 s on the same
PostgreSQL and prints settled/s as a ratio to its tps. Writes a JSON file and a PNG chart of
throughput and latency over time. A figure, not a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, cast
from urllib.parse import urlsplit

import asyncpg
import msgspec

from benchmarks.scratch import free_port, with_database
from exchange.identity.uscc import synthetic_uscc
from exchange.platform.settings import Settings

DEPOSIT_FEN = 10**13  # enough that no buyer runs out: a refused reserve would not measure speed
PRICE_FEN = 100
QUANTITY = 10


@dataclass
class Second:
    accepted: int = 0
    executed: int = 0
    errors: int = 0
    latencies: list[float] = field(default_factory=list)
    settled: int = 0


@dataclass
class Run:
    started: float = 0.0
    seconds: list[Second] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)

    def at(self, when: float) -> Second:
        index = int(when - self.started)
        while len(self.seconds) <= index:
            self.seconds.append(Second())
        return self.seconds[index]

    def error(self, kind: str, when: float) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1
        self.at(when).errors += 1


class ServerDisconnectedError(ConnectionError):
    """The server closed the connection before the whole response arrived."""


class ProtocolError(Exception):
    """A response this client does not read (no status line, no Content-Length)."""


class _Connection(asyncio.Protocol):
    """One persistent HTTP/1.1 keep-alive connection, one request in flight: the response read
    minimally (status line, Content-Length, body), as granian answers."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buffer = b""
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is no subclass of asyncio.Transport, but has its methods.
        self.transport = cast("asyncio.Transport", transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ServerDisconnectedError(str(exc) if exc else "server closed the connection"))

    def request(self, raw: bytes) -> asyncio.Future[tuple[int, bytes]]:
        assert self.transport is not None and self._waiter is None
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return waiter

    def timed_out(self) -> None:
        self._fail(TimeoutError())
        self.close()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _fail(self, error: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            self._buffer = buffer
            return
        head = buffer[:end].lower()
        try:
            status = int(head[9:12]) if head.startswith(b"http/1.") else -1
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 17)
                length = int(head[at + 17 : stop if stop >= 0 else len(head)])
            elif status in (204, 304) or 100 <= status < 200:
                length = 0
            else:
                length = -1
        except ValueError:
            status = length = -1
        if status < 0 or length < 0 or self._waiter is None:
            self._fail(ProtocolError(buffer[:80].decode("latin-1")))
            self.close()
            return
        if len(buffer) < end + 4 + length:
            self._buffer = buffer
            return
        body = buffer[end + 4 : end + 4 + length]
        self._buffer = buffer[end + 4 + length :]
        if b"\r\nconnection: close" in head:
            self.close()
        waiter, self._waiter = self._waiter, None
        if not waiter.done():
            waiter.set_result((status, body))


class _Http:
    """A lean HTTP/1.1 client for the load: a pool of ``connections`` persistent keep-alive
    connections (opened as needed, opened again after the server closed one), requests written
    as pre-encoded bytes, responses read minimally. It shares the machine with the exchange it
    measures, so its CPU time per order is kept small: 0.06-0.15 ms in a closed loop on the
    2-core machine, where aiohttp's was ~0.32 ms."""

    def __init__(self, url: str, connections: int, timeout: float = 30.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"the load client speaks plain HTTP/1.1: an http:// URL, not {url}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.authority = parts.netloc.encode()
        self.timeout = timeout
        # Free slots: an idle connection, or None where one may be opened.
        self._slots: asyncio.LifoQueue[_Connection | None] = asyncio.LifoQueue()
        for _ in range(connections):
            self._slots.put_nowait(None)
        self._open: set[_Connection] = set()

    def prefix(self, method: str, path: str, token: str, headers: dict[str, str]) -> bytes:
        """Request line and headers, without the CRLF that ends the last one (a last header
        given as "" takes its value after: the orders' idempotency key)."""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.authority.decode()}",
                 f"Authorization: Bearer {token}"]  # fmt: skip
        lines += [f"{name}: {value}" for name, value in headers.items()]
        return "\r\n".join(lines).encode("latin-1")

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        """One whole request (pre-encoded) on a pooled connection: (status, body)."""
        conn = await self._slots.get()
        try:
            if conn is None or conn.closed:
                conn = await self._connect()
            loop = asyncio.get_running_loop()
            timer = loop.call_later(self.timeout, conn.timed_out)
            try:
                return await conn.request(raw)
            finally:
                timer.cancel()
        except BaseException:
            if conn is not None:
                conn.close()
            conn = None
            raise
        finally:
            if conn is not None and conn.closed:
                self._open.discard(conn)
                conn = None
            self._slots.put_nowait(conn)

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(_Connection, self.host, self.port), self.timeout
        )
        self._open.add(conn)
        return conn

    async def call(
        self,
        method: str,
        path: str,
        token: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        data = b"" if body is None else msgspec.json.encode(body)
        hdrs = dict(headers or {})
        if body is not None:
            hdrs["Content-Type"] = "application/json"
        hdrs["Content-Length"] = str(len(data))
        status, raw = await self.send(self.prefix(method, path, token, hdrs) + b"\r\n\r\n" + data)
        return status, msgspec.json.decode(raw) if raw else None

    async def ok(self, method: str, path: str, token: str, body: Any = None) -> Any:
        status, payload = await self.call(method, path, token, body)
        while status == 429:
            # Setting up many buyers can outrun the admin token's rate limit (the exchange
            # answered without acting): wait as long as it says, then ask again.
            await asyncio.sleep(float((payload or {}).get("retry_after_s", 1)))
            status, payload = await self.call(method, path, token, body)
        if status >= 300:
            raise RuntimeError(f"{method} {path}: {status} {payload}")
        return payload

    async def close(self) -> None:
        for conn in self._open:
            conn.close()
        self._open.clear()
        await asyncio.sleep(0)  # let the transports close


@dataclass(frozen=True)
class Market:
    products: list[str]
    buyers: list[str]  # tokens
    buyer_orgs: list[str]


async def _org(http: _Http, admin: str, role: str, n: int) -> tuple[str, str]:
    org = await http.ok("POST", "/v1/organisations", admin, {
        "name": f"压测{role}{n}", "uscc": synthetic_uscc(uuid.uuid4().int), "roles": [role],
        "region": "310000",
        "contact": {"name": "压测", "email": "bench@example.cn", "phone": "+86 21 0000 0000"},
    })  # fmt: skip
    issued = await http.ok(
        "POST", f"/v1/organisations/{org['id']}/tokens", admin, {"name": "bench", "roles": [role]}
    )
    return org["id"], issued["token"]


async def _seller(http: _Http, admin: str, n: int) -> str:
    from benchmarks.orders import SAMPLE_PRODUCT, _Key

    _org_id, token = await _org(http, admin, "seller", n)
    key = _Key()
    key.kid = (await http.ok("POST", "/v1/keys", token, key.jwk))["kid"]
    product = SAMPLE_PRODUCT | {"name_zh": f"压测数据集{n}"}
    product["plans"] = [plan | {"price_fen": PRICE_FEN} for plan in SAMPLE_PRODUCT["plans"]]
    created = await http.ok("POST", "/v1/products", token, product)
    submitted = await http.ok("POST", f"/v1/products/{created['id']}/submit", token)
    case = submitted["review"]["case_id"]
    await http.ok("POST", f"/v1/reviews/{case}/claim", admin)
    await http.ok(
        "POST", f"/v1/reviews/{case}/decisions", admin, {"verdict": "approve", "reason": "压测"}
    )
    terms = await http.ok("GET", f"/v1/products/{created['id']}/plans/auto/offer", token)
    offer = {"plan_id": "auto", "jws": key.detached(terms["canonical"].encode())}
    await http.ok("POST", f"/v1/products/{created['id']}/standing-offers", token, offer)
    return str(created["id"])


async def _buyer(http: _Http, admin: str, n: int) -> tuple[str, str]:
    org_id, token = await _org(http, admin, "buyer", n)
    await http.ok("POST", "/v1/keys/custodial", token)
    await http.ok("POST", f"/v1/accounts/{org_id}/deposits", admin,
                  {"amount_fen": DEPOSIT_FEN, "external_ref": f"bench-{uuid.uuid4()}"})  # fmt: skip
    return org_id, token


async def setup_market(http: _Http, admin: str, sellers: int, buyers: int) -> Market:
    products = await asyncio.gather(*(_seller(http, admin, n) for n in range(sellers)))
    parties = await asyncio.gather(*(_buyer(http, admin, n) for n in range(buyers)))
    return Market(list(products), [t for _, t in parties], [o for o, _ in parties])


def _order(product_id: str) -> dict[str, Any]:
    return {"product_id": product_id, "plan_id": "auto", "purpose": "research",
            "territory": ["CN"], "buyer_country": "CN", "delivery_country": "CN",
            "term_days": 30, "redistribution": False, "quantity": QUANTITY}  # fmt: skip


class _Placed(msgspec.Struct):
    state: str | None = None


_placed = msgspec.json.Decoder(_Placed)


@dataclass(frozen=True)
class _Orders:
    """The order requests as bytes: a head per buyer token (up to the idempotency key's value)
    and a tail per product (Content-Length and the msgspec-encoded body)."""

    heads: list[bytes]
    tails: list[bytes]

    @classmethod
    def of(cls, http: _Http, market: Market) -> _Orders:
        json = {"Content-Type": "application/json", "Idempotency-Key": ""}
        heads = [http.prefix("POST", "/v1/orders", token, json) for token in market.buyers]
        bodies = [msgspec.json.encode(_order(product)) for product in market.products]
        tails = [b"\r\nContent-Length: %d\r\n\r\n%s" % (len(b), b) for b in bodies]
        return cls(heads, tails)


async def _place(http: _Http, orders: _Orders, n: int, run: Run, scheduled: float) -> None:
    heads, tails = orders.heads, orders.tails
    raw = heads[n % len(heads)] + str(uuid.uuid4()).encode() + tails[n % len(tails)]
    try:
        status, body = await http.send(raw)
    except Exception as error:  # noqa: BLE001 - connection errors and timeouts: counted, not fatal
        run.error(type(error).__name__, time.perf_counter())
        return
    done = time.perf_counter()
    if status != 201:
        run.error(f"HTTP {status}", done)
        return
    second = run.at(done)
    second.accepted += 1
    second.latencies.append(done - scheduled)
    try:
        state = _placed.decode(body).state
    except msgspec.DecodeError:
        state = "unreadable"
    if state == "executed":
        second.executed += 1
    else:
        run.error(f"state {state}", done)


async def drive(
    http: _Http, market: Market, run: Run, duration: float, concurrency: int, rate: float | None
) -> None:
    orders = _Orders.of(http, market)
    run.started = time.perf_counter()
    deadline = run.started + duration
    if rate is None:

        async def client(k: int) -> None:
            n = k
            while (now := time.perf_counter()) < deadline:
                await _place(http, orders, n, run, now)
                n += concurrency

        await asyncio.gather(*(client(k) for k in range(concurrency)))
        return
    # Open loop: order n is due at started + n / rate, whatever happened to the earlier ones.
    limit = asyncio.Semaphore(max(concurrency, 1))
    tasks: set[asyncio.Task[None]] = set()

    async def one(n: int, due: float) -> None:
        async with limit:
            await _place(http, orders, n, run, due)

    n = 0
    while (due := run.started + n / rate) < deadline:
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(n, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
    if tasks:
        await asyncio.gather(*tasks)


async def _ledger_size(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT coalesce(max(seq) + 1, 0) FROM ledger_entries"))


async def watch_ledger(database_url: str, run: Run, stop: asyncio.Event) -> None:
    """Ledger entries appended per second of the run (one entry per reserved trade)."""
    conn = await asyncpg.connect(database_url)
    try:
        last = await _ledger_size(conn)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            size = await _ledger_size(conn)
            if run.started:
                run.at(time.perf_counter() - 0.5).settled += size - last
            last = size
    finally:
        await conn.close()


_SETTLED_SQL = """
SELECT count(*) AS trades,
       min(l.created_at) AS first, max(l.created_at) AS last,
       percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP
           (ORDER BY extract(epoch FROM l.created_at - o.created_at)) AS e2e
FROM orders o
JOIN trade_contracts c ON c.order_id = o.id
JOIN ledger_entries l ON l.trade_id = c.id AND l.step = 'reserved'
WHERE o.buyer_org_id = ANY($1::uuid[]) AND o.created_at >= $2
"""
_EXECUTED_SQL = (
    "SELECT count(*) FROM orders WHERE buyer_org_id = ANY($1::uuid[]) AND state = 'executed'"
    " AND created_at >= $2"
)


async def await_settled(
    database_url: str, market: Market, since: datetime, limit: float
) -> asyncpg.Record:
    """Wait until every order executed since ``since`` (the measured window's start, database
    time) is in the ledger (or ``limit`` seconds); its settlement figures."""
    conn = await asyncpg.connect(database_url)
    try:
        orgs = [uuid.UUID(o) for o in market.buyer_orgs]
        executed = int(await conn.fetchval(_EXECUTED_SQL, orgs, since))
        until = time.monotonic() + limit
        while True:
            row = await conn.fetchrow(_SETTLED_SQL, orgs, since)
            assert row is not None
            if row["trades"] >= executed or time.monotonic() > until:
                return row
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


async def _database_now(database_url: str) -> datetime:
    conn = await asyncpg.connect(database_url)
    try:
        now: datetime = await conn.fetchval("SELECT now()")
        return now
    finally:
        await conn.close()


# --- processes ----------------------------------------------------------------------------


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _label(pid: int) -> str | None:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return None
    if "serve api" in cmd:
        return "api"
    if "serve relay" in cmd:
        return "relay"
    if "serve settlement" in cmd:
        return "settlement"
    if "serve delivery" in cmd:
        return "delivery"
    if "serve gateway" in cmd or "exchange.delivery.gateway" in cmd:
        return "gateway"
    if "nats-server" in cmd:
        return "nats-server"
    if "postgres" in cmd.split(" ")[0] or cmd.startswith("postgres"):
        return "postgres"
    if " up" in cmd:
        return "dataex up"
    return None


def peak_rss(root: int) -> list[tuple[str, int, float]]:
    """(label, pid, peak RSS MiB) of the processes under ``root`` (Linux /proc); PostgreSQL's
    backends summed up as their largest (their RSS counts the shared buffers they touched)."""
    rows = _peak_rss(_descendants(root))
    backends = [r for r in rows if r[0] == "postgres"]
    if len(backends) > 1:
        postmaster = min(backends, key=lambda r: r[1])
        rest = [r for r in backends if r is not postmaster]
        largest = max(rest, key=lambda r: r[2])
        rows = [r for r in rows if r[0] != "postgres"] + [
            postmaster,
            (f"postgres (max of {len(rest)})", largest[1], largest[2]),
        ]
    return sorted(rows)


def _peak_rss(pids: list[int]) -> list[tuple[str, int, float]]:
    rows = []
    for pid in pids:
        label = _label(pid)
        if label is None:
            continue
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{pid}/status").read_text()
            match = re.search(r"VmHWM:\s+(\d+) kB", status)
            if match:
                rows.append((label, pid, int(match.group(1)) / 1024))
    return sorted(rows)


@contextlib.contextmanager
def exchange_up(api_workers: int) -> Iterator[tuple[str, str, Path, subprocess.Popen[str]]]:
    """A fresh `dataex up` in a temporary state folder: (url, admin token, state dir, process)."""
    state = Path(tempfile.mkdtemp(prefix="dataex-bench-"))
    port = free_port()
    env = {**os.environ, "DATAEX_STATE_DIR": str(state), "DATAEX_HTTP_PORT": str(port),
           "DATAEX_GATEWAY_PORT": str(free_port()), "DATAEX_API_WORKERS": str(api_workers),
           "DATAEX_LOG_LEVEL": "warning"}  # fmt: skip
    for name in ("DATAEX_DATABASE_URL", "DATAEX_NATS_URL"):
        env.pop(name, None)
    process = subprocess.Popen(
        [sys.executable, "-m", "exchange.cli", "up"], env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        token = None
        assert process.stdout is not None
        deadline = time.monotonic() + 120
        for line in process.stdout:
            match = re.search(r"(dxt_[A-Za-z0-9_-]+)", line)
            if match:
                token = match.group(1)
            if "Ctrl-C" in line or time.monotonic() > deadline:
                break
        if token is None:
            raise RuntimeError("dataex up printed no admin token")
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url)
        threading_drain(process)
        yield url, token, state, process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(30)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 9)
        shutil.rmtree(state, ignore_errors=True)


def threading_drain(process: subprocess.Popen[str]) -> None:
    """Keep reading the child's output so it never blocks on a full pipe."""
    import threading

    def drain() -> None:
        assert process.stdout is not None
        for _line in process.stdout:
            pass

    threading.Thread(target=drain, daemon=True).start()


def _wait_ready(url: str) -> None:
    import urllib.request

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{url}/health/ready", timeout=2) as response,  # noqa: S310
        ):
            if response.status == 200:
                return
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not become ready")


async def run_pgbench(database_url: str, seconds: int, out: TextIO) -> float:
    """pgbench TPC-B on the same server, in a database of its own (dropped after)."""
    from benchmarks.settlement import pgbench

    name = f"dataex_pgbench_{uuid.uuid4().hex[:8]}"
    admin = with_database(database_url, "postgres")
    conn = await asyncpg.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    try:
        return await asyncio.to_thread(pgbench, with_database(database_url, name), seconds, out)
    finally:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


# --- the run ------------------------------------------------------------------------------


def _pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] * 1000 if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


async def _progress(run: Run, duration: float, stop: asyncio.Event, out: TextIO) -> None:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(),
        TextColumn("{task.fields[rates]}"), console=_console(out), transient=True,
    ) as progress:  # fmt: skip
        task = progress.add_task("orders", total=duration, rates="")
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
            elapsed = time.perf_counter() - run.started if run.started else 0.0
            recent = run.seconds[-3:-1] or run.seconds[-1:]
            accepted = sum(s.accepted for s in recent) / max(len(recent), 1)
            settled = sum(s.settled for s in recent) / max(len(recent), 1)
            errors = sum(run.errors.values())
            rates = f"{accepted:,.0f} orders/s  {settled:,.0f} settled/s  errors {errors}"
            progress.update(task, completed=min(elapsed, duration), rates=rates)


def _console(out: TextIO) -> Any:
    from rich.console import Console

    return Console(file=out)


async def bench_trades(args: Any, out: TextIO) -> int:
    if args.url:
        from exchange import runtime

        with runtime.servers(Settings.from_env()) as live:
            admin = args.admin_token or await runtime.prepare(live, bootstrap="always")
            assert live.database_url and admin
            return await _bench(args, args.url, admin, live.database_url, None, out)
    with exchange_up(args.api_workers) as (url, admin, state, process):
        from exchange import runtime

        with runtime.servers(Settings.from_env({"DATAEX_STATE_DIR": str(state)})) as live:
            assert live.database_url
            return await _bench(args, url, admin, live.database_url, process.pid, out)


async def _bench(
    args: Any, url: str, admin: str, database_url: str, root: int | None, out: TextIO
) -> int:
    tps = await run_pgbench(database_url, 20, out) if args.pgbench else None
    http = _Http(url, max(args.concurrency, 8))
    try:
        out.write(f"setting up {args.sellers} sellers and {args.buyers} buyers at {url} …\n")
        market = await setup_market(http, admin, args.sellers, args.buyers)
        if args.warmup > 0:
            # The same load, not counted: pools fill, statements get prepared and planned.
            out.write(f"warming up for {args.warmup:g} s (not counted) …\n")
            await drive(http, market, Run(), args.warmup, args.concurrency, args.rate)
        since = await _database_now(database_url)
        run, stop = Run(), asyncio.Event()
        watcher = asyncio.create_task(watch_ledger(database_url, run, stop))
        bar = asyncio.create_task(_progress(run, args.duration, stop, out))
        cpu = _cpu_seconds()
        await drive(http, market, run, args.duration, args.concurrency, args.rate)
        elapsed = time.perf_counter() - run.started
        client_cpu = _cpu_seconds() - cpu
        settled_row = await await_settled(database_url, market, since, 120)
        stop.set()
        await asyncio.gather(watcher, bar)
    finally:
        await http.close()
    rss = peak_rss(root) if root else peak_rss_by_name()
    report = _report(args, run, elapsed, settled_row, tps, rss, client_cpu)
    _print(report, out)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = Path(args.out or ".") / f"bench-trades-{stamp}"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.with_suffix(".json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    _chart(report, target.with_suffix(".png"))
    out.write(f"\nwrote {target.with_suffix('.json')} and {target.with_suffix('.png')}\n")
    return 0 if not run.errors else 1


def _cpu_seconds() -> float:
    """CPU time (user + system, all threads) of this process, the load client: on the same
    machine every second of it is taken from the exchange it measures."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_by_name() -> list[tuple[str, int, float]]:
    """Without a process of our own to start from: every dataex process on this machine."""
    rows: list[tuple[str, int, float]] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"exchange.cli" in cmd or b"dataex" in cmd:
                pid = int(entry.name)
                rows.extend(_peak_rss([pid]))
    return sorted(set(rows))


def _report(
    args: Any,
    run: Run,
    elapsed: float,
    settled: asyncpg.Record,
    tps: float | None,
    rss: list[tuple[str, int, float]],
    client_cpu_s: float | None = None,
) -> dict[str, Any]:
    latencies = [x for s in run.seconds for x in s.latencies]
    accepted = sum(s.accepted for s in run.seconds)
    executed = sum(s.executed for s in run.seconds)
    seconds = run.seconds[: int(elapsed)]  # the timeline: whole seconds (the last is partial)
    span = (
        (settled["last"] - settled["first"]).total_seconds()
        if settled["trades"] and settled["first"] != settled["last"]
        else elapsed
    )
    settled_rate = settled["trades"] / max(span, elapsed) if settled["trades"] else 0.0
    e2e = [x * 1000 for x in settled["e2e"]] if settled["e2e"] else [float("nan")] * 3
    return {
        "config": {"duration_s": args.duration, "warmup_s": args.warmup,
                   "concurrency": args.concurrency,
                   "rate": args.rate, "sellers": args.sellers, "buyers": args.buyers,
                   "api_workers": None if args.url else args.api_workers,
                   "cpus": os.cpu_count()},
        "elapsed_s": round(elapsed, 2),
        "orders_accepted": accepted, "orders_accepted_per_s": round(accepted / elapsed, 1),
        "contracts_executed": executed,
        "contracts_executed_per_s": round(executed / elapsed, 1),
        "trades_settled": settled["trades"], "trades_settled_per_s": round(settled_rate, 1),
        "order_latency_ms": {"p50": round(_pct(latencies, 50), 1),
                             "p95": round(_pct(latencies, 95), 1),
                             "p99": round(_pct(latencies, 99), 1)},
        "order_to_settled_ms": {"p50": round(e2e[0], 1), "p95": round(e2e[1], 1),
                                "p99": round(e2e[2], 1)},
        "errors": run.errors,
        "client_cpu_ms_per_order": (round(client_cpu_s * 1000 / accepted, 3)
                                    if client_cpu_s is not None and accepted else None),
        "pgbench_tps": round(tps, 1) if tps else None,
        "settled_per_pgbench_tps": round(settled_rate / tps, 3) if tps else None,
        "peak_rss_mib": [{"process": label, "pid": pid, "mib": round(mib, 1)}
                         for label, pid, mib in rss],
        "timeline": [{"second": i, "accepted": s.accepted, "executed": s.executed,
                      "settled": s.settled, "errors": s.errors,
                      "p50_ms": round(_pct(s.latencies, 50), 1) if s.latencies else None,
                      "p99_ms": round(_pct(s.latencies, 99), 1) if s.latencies else None}
                     for i, s in enumerate(seconds)],
    }  # fmt: skip


def _print(report: dict[str, Any], out: TextIO) -> None:
    from rich.table import Table

    table = Table(title="dataex bench trades", show_header=True)
    table.add_column("measure")
    table.add_column("value", justify="right")
    c = report["config"]
    mode = (
        f"open loop at {c['rate']}/s" if c["rate"] else f"closed loop, {c['concurrency']} in flight"
    )
    warm = f" after {c['warmup_s']:g} s warm-up" if c.get("warmup_s") else ""
    table.add_row("run", f"{report['elapsed_s']} s{warm}, {mode}, {c['buyers']} buyers, "
                  f"{c['sellers']} products, {c['cpus']} CPUs")  # fmt: skip
    table.add_row(
        "orders accepted", f"{report['orders_accepted']:,} ({report['orders_accepted_per_s']:,}/s)"
    )
    table.add_row(
        "contracts executed",
        f"{report['contracts_executed']:,} ({report['contracts_executed_per_s']:,}/s)",
    )
    table.add_row(
        "trades settled (ledger)",
        f"{report['trades_settled']:,} ({report['trades_settled_per_s']:,}/s)",
    )
    lat, e2e = report["order_latency_ms"], report["order_to_settled_ms"]
    table.add_row("order latency p50 / p95 / p99", f"{lat['p50']} / {lat['p95']} / {lat['p99']} ms")
    table.add_row(
        "order → settled p50 / p95 / p99", f"{e2e['p50']} / {e2e['p95']} / {e2e['p99']} ms"
    )
    table.add_row("errors", json.dumps(report["errors"]) if report["errors"] else "none")
    if report.get("client_cpu_ms_per_order") is not None:
        table.add_row("load client CPU per order", f"{report['client_cpu_ms_per_order']} ms")
    if report["pgbench_tps"]:
        table.add_row("pgbench TPC-B (same server, 20 s)", f"{report['pgbench_tps']:,} tps")
        table.add_row("settled/s ÷ pgbench tps", f"{report['settled_per_pgbench_tps']}")
    for row in report["peak_rss_mib"]:
        table.add_row(f"peak RSS {row['process']} (pid {row['pid']})", f"{row['mib']} MiB")
    _console(out).print(table)


def _chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = report["timeline"]
    xs = [t["second"] for t in timeline]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    top.plot(xs, [t["accepted"] for t in timeline], label="orders accepted/s")
    top.plot(xs, [t["executed"] for t in timeline], label="contracts executed/s", linestyle="--")
    top.plot(xs, [t["settled"] for t in timeline], label="trades settled/s (ledger)")
    top.set_ylabel("per second")
    top.legend(loc="lower right")
    top.grid(alpha=0.3)
    bottom.plot(xs, [t["p50_ms"] for t in timeline], label="order latency p50")
    bottom.plot(xs, [t["p99_ms"] for t in timeline], label="order latency p99")
    bottom.set_ylabel("ms")
    bottom.set_xlabel("second of the run")
    bottom.legend(loc="upper right")
    bottom.grid(alpha=0.3)
    c = report["config"]
    mode = f"open loop {c['rate']}/s" if c["rate"] else f"closed loop, {c['concurrency']} in flight"
    fig.suptitle(f"dataex bench trades — {mode}, {c['cpus']} CPUs")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
