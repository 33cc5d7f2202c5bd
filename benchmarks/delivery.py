"""``dataex bench delivery``: what delivery costs, each figure beside a baseline of the same run.

Runs in a database, a stream and a state folder of its own on the configured (or embedded)
servers, removed afterwards. It starts the real parts as processes (``dataex serve api``,
``relay``, ``settlement``, ``delivery``), the gateway (``python -m exchange.delivery.gateway``),
a local upstream (a 6-line ASGI app under granian, ``benchmarks.delivery_upstream``) and a plain
static file server (granian's own static route, ``--static-path-mount``). Over HTTP with the
admin token it lists a product with two plans (``quota``: a large ``requests`` quota; ``meter``:
requests priced under a spend cap), funds a buyer, orders both, waits for the grants to become
active (settlement reserves, the delivery worker activates), registers the upstream and uploads
the file in 8 MiB chunks. Then it measures:

1. calls/s in a closed loop (N connections, D seconds) through the gateway to the upstream, for
   each plan and each gateway worker count, beside direct calls/s to the same upstream from the
   same client in the same run;
   then two pass-through proxies that do none of the gateway's work (no token, grant, quota,
   signature or usage record) beside direct calls: ``benchmarks.delivery_floor`` served the way
   the gateway is (ASGI under granian) and ``benchmarks.delivery_rawfloor`` on a bare uvloop
   protocol. A gateway does strictly more per call than either, so their ratios bound its ratio
   on this machine;
2. latency p50/p95/p99 in an open loop at a fixed rate (500/s), gateway beside direct;
3. file download MB/s from the API (decrypting, metered), whole and in parallel ranges, beside
   the same plaintext from the static server;
4. delivery token issue (``POST /v1/grants/{id}/tokens``) p50/p95/p99 beside ``GET /health/live``
   on the same API;
5. suspension → denial: staff suspend the listing (and, separately, the grant) and a valid token
   is polled on the gateway every 5 ms until it gets ``grant_suspended``; then reinstated.

Writes a JSON file and a PNG chart (``delivery-<stamp>``) and prints a table. Figures, not tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import msgspec

from benchmarks.scratch import UNLIMITED, drop_scratch, free_port, scratch_settings
from benchmarks.trades import _Http, _org
from exchange.platform.settings import Settings

MiB = 1 << 20
CHUNK = 8 * MiB
DEPOSIT_FEN = 10**12
SPEND_CAP_FEN = 10**9  # far more than the run can spend: a refusal would not measure speed
FILE_NAME = "bench.bin"
ROOT = Path(__file__).resolve().parents[1]


# --- processes ----------------------------------------------------------------------------


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - our own URL
            return bool(response.status == 200)
    except OSError:
        return False


async def _wait_answering(url: str, process: subprocess.Popen[bytes], limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while not await asyncio.to_thread(_answers, url):
        if process.poll() is not None:
            raise RuntimeError(f"the process for {url} exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer in {limit:.0f} s")
        await asyncio.sleep(0.1)


def _spawn(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command, env=env, cwd=ROOT, stdin=subprocess.DEVNULL, start_new_session=True
    )


def _granian(port: int, *extra: str, app: str = "benchmarks.delivery_upstream:app") -> list[str]:
    return [sys.executable, "-m", "granian", "--interface", "asgi", "--http", "1",
            "--host", "127.0.0.1", "--port", str(port), "--workers", "1", "--no-ws",
            "--log-level", "warning", "--no-access-log", *extra, app]  # fmt: skip


@dataclass
class Processes:
    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def stop(self, *names: str) -> None:
        from exchange.runtime import stop_parts

        chosen = {n: p for n, p in self.children.items() if not names or n in names}
        stop_parts(chosen, 5.0)
        for name in chosen:
            self.children.pop(name, None)


# --- the exchange's own database, stream and state --------------------------------------------


async def _bench_settings(live: Settings, tag: str, state: Path) -> tuple[Settings, str]:
    settings, token = await scratch_settings(
        live, f"delivery_{tag}", bootstrap="always", state_dir=state, http_host="127.0.0.1",
        http_port=free_port(), api_workers=1, **UNLIMITED,
    )  # fmt: skip
    assert token
    return settings, token


# --- the market: a product with two plans, a funded buyer, two active grants -----------------


def _plan(plan_id: str, **extra: Any) -> dict[str, Any]:
    return {"id": plan_id, "name": f"压测{plan_id}", "price_fen": 100, "free": False,
            "purposes": ["research"], "territory": ["CN"], "max_term_days": 365,
            "redistribution": False, "acceptance_days": 3} | extra  # fmt: skip


@dataclass
class Market:
    product: str
    seller: str  # tokens
    buyer: str
    grants: dict[str, str]  # "quota/api", "quota/file", "meter/api" -> grant id


def _write_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as handle:
        left = size
        while left > 0:
            piece = os.urandom(min(CHUNK, left))
            digest.update(piece)
            handle.write(piece)
            left -= len(piece)
    return digest.hexdigest()


async def _setup(http: _Http, admin: str, file: dict[str, Any]) -> Market:
    from benchmarks.orders import SAMPLE_PRODUCT, _Key

    _seller_org, seller = await _org(http, admin, "seller", 0)
    key = _Key()
    key.kid = (await http.ok("POST", "/v1/keys", seller, key.jwk))["kid"]
    manual = SAMPLE_PRODUCT["manual"] | {"files": [file]}
    plans = [
        _plan("quota", pricing="subscription", dimensions=[{"name": "requests", "quota": 10**12}]),
        _plan("meter", pricing="metered", price_fen=1, acceptance_days=0,
              dimensions=[{"name": "requests", "unit_price_millifen": 10}]),
    ]  # fmt: skip
    document = SAMPLE_PRODUCT | {"name_zh": "压测交付数据集", "manual": manual,
                                 "delivery": ["api", "file"], "plans": plans}  # fmt: skip
    created = await http.ok("POST", "/v1/products", seller, document)
    product = str(created["id"])
    submitted = await http.ok("POST", f"/v1/products/{product}/submit", seller)
    case = submitted["review"]["case_id"]
    await http.ok("POST", f"/v1/reviews/{case}/claim", admin)
    await http.ok(
        "POST", f"/v1/reviews/{case}/decisions", admin, {"verdict": "approve", "reason": "压测"}
    )
    for plan in ("quota", "meter"):
        terms = await http.ok("GET", f"/v1/products/{product}/plans/{plan}/offer", seller)
        offer = {"plan_id": plan, "jws": key.detached(terms["canonical"].encode())}
        await http.ok("POST", f"/v1/products/{product}/standing-offers", seller, offer)
    buyer_org, buyer = await _org(http, admin, "buyer", 0)
    await http.ok("POST", "/v1/keys/custodial", buyer)
    await http.ok("POST", f"/v1/accounts/{buyer_org}/deposits", admin,
                  {"amount_fen": DEPOSIT_FEN, "external_ref": f"bench-{uuid.uuid4()}"})  # fmt: skip
    grants: dict[str, str] = {}
    for plan, extra in (("quota", {}), ("meter", {"spend_cap_fen": SPEND_CAP_FEN})):
        order = {"product_id": product, "plan_id": plan, "purpose": "research",
                 "territory": ["CN"], "buyer_country": "CN", "delivery_country": "CN",
                 "term_days": 30, "redistribution": False, "quantity": 1} | extra  # fmt: skip
        status, placed = await http.call("POST", "/v1/orders", buyer, order,
                                         {"Idempotency-Key": str(uuid.uuid4())})  # fmt: skip
        if status != 201 or placed.get("state") != "executed":
            raise RuntimeError(f"order for plan {plan}: {status} {placed}")
        trade = uuid.UUID(placed["contract_id"])
        modes = ("api", "file") if plan == "quota" else ("api",)  # metered: its first mode only
        for mode in modes:
            grants[f"{plan}/{mode}"] = str(uuid.uuid5(trade, mode))
    return Market(product, seller, buyer, grants)


async def _await_active(http: _Http, market: Market, limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    for grant in market.grants.values():
        while True:
            status, body = await http.call("GET", f"/v1/grants/{grant}", market.buyer)
            if status == 200 and body.get("state") == "active":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"grant {grant} not active in {limit:.0f} s: {status} {body}")
            await asyncio.sleep(0.2)


async def _upload(http: _Http, market: Market, path: Path, out: TextIO) -> float:
    """The file in 8 MiB chunks through the upload API; MB/s of the whole (incl. complete)."""
    started = time.perf_counter()
    route = f"/v1/products/{market.product}/revisions/1/files/{FILE_NAME}/uploads"
    upload = await http.ok("POST", route, market.seller)
    with open(path, "rb") as handle:  # noqa: ASYNC230, PTH123 - 8 MiB reads between sends
        index = 0
        while piece := handle.read(upload["chunk_bytes"]):
            headers = {"Content-Type": "application/octet-stream",
                       "X-Chunk-SHA256": hashlib.sha256(piece).hexdigest(),
                       "Content-Length": str(len(piece))}  # fmt: skip
            raw = http.prefix("PUT", f"/v1/uploads/{upload['id']}/chunks/{index}",
                              market.seller, headers) + b"\r\n\r\n" + piece  # fmt: skip
            status, body = await http.send(raw)
            if status != 200:
                raise RuntimeError(f"chunk {index}: {status} {body[:200]!r}")
            index += 1
    await http.ok("POST", f"/v1/uploads/{upload['id']}/complete", market.seller)
    seconds = time.perf_counter() - started
    size = await asyncio.to_thread(lambda: path.stat().st_size)
    out.write(f"uploaded {size / 1e6:,.0f} MB in {index} chunks in {seconds:.1f} s\n")
    return size / 1e6 / seconds


async def _token(http: _Http, market: Market, grant: str) -> str:
    issued = await http.ok("POST", f"/v1/grants/{grant}/tokens", market.buyer)
    return str(issued["token"])


# --- load ---------------------------------------------------------------------------------


def _ms(values: list[float], q: int) -> float | None:
    if not values:
        return None
    if len(values) < 2:
        return round(values[0] * 1000, 2)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000, 2)


def _percentiles(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50_ms": _ms(values, 50), "p95_ms": _ms(values, 95),
            "p99_ms": _ms(values, 99),
            "max_ms": round(max(values) * 1000, 2) if values else None}  # fmt: skip


@dataclass
class Tally:
    ok: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # HTTP status (and code) -> count
    errors: dict[str, int] = field(default_factory=dict)  # client side: exceptions
    latencies: list[float] = field(default_factory=list)
    started: float = 0.0
    elapsed: float = 0.0

    def count(self, kind: dict[str, int], name: str) -> None:
        kind[name] = kind.get(name, 0) + 1


def _problem_code(body: bytes) -> str:
    with contextlib.suppress(Exception):
        return str(msgspec.json.decode(body).get("code", ""))
    return ""


async def _one(http: _Http, raw: bytes, tally: Tally, since: float) -> None:
    try:
        status, body = await http.send(raw)
    except Exception as error:  # noqa: BLE001 - counted, not fatal
        tally.count(tally.errors, type(error).__name__)
        return
    if status == 200:
        tally.ok += 1
        tally.latencies.append(time.perf_counter() - since)
    else:
        tally.count(tally.refused, f"{status} {_problem_code(body)}".strip())


async def closed_loop(http: _Http, raw: bytes, connections: int, seconds: float) -> Tally:
    tally = Tally(started=time.perf_counter())
    deadline = tally.started + seconds

    async def client() -> None:
        while (now := time.perf_counter()) < deadline:
            await _one(http, raw, tally, now)

    await asyncio.gather(*(client() for _ in range(connections)))
    tally.elapsed = time.perf_counter() - tally.started
    return tally


async def open_loop(http: _Http, raw: bytes, rate: float, seconds: float) -> Tally:
    """Call n is due at start + n / rate whatever happened to the others; its latency counts
    from when it was due (so a client or server falling behind shows)."""
    tally = Tally(started=time.perf_counter())
    tasks: set[asyncio.Task[None]] = set()
    n = 0
    while (due := tally.started + n / rate) < tally.started + seconds:
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(_one(http, raw, tally, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
    if tasks:
        await asyncio.gather(*tasks)
    tally.elapsed = time.perf_counter() - tally.started
    return tally


def _get(http: _Http, path: str, token: str | None = None, **headers: str) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {http.authority.decode()}"]
    if token:
        lines.append(f"Authorization: Bearer {token}")
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


# --- downloads ----------------------------------------------------------------------------


async def download(
    url: str, path: str, token: str | None = None, first: int | None = None,
    last: int | None = None,
) -> int:  # fmt: skip
    """One GET on a connection of its own, the body read and dropped; the bytes received."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port, limit=4 * MiB)
    try:
        lines = [f"GET {path} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
        if token:
            lines.append(f"Authorization: Bearer {token}")
        if first is not None:
            lines.append(f"Range: bytes={first}-{last}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        status = int(head[9:12])
        if status not in (200, 206):
            raise RuntimeError(f"GET {url}{path}: {status} {(await reader.read(500))!r}")
        length = -1
        for line in head.split("\r\n"):
            if line.startswith("content-length:"):
                length = int(line.split(":", 1)[1])
        got = 0
        while length < 0 or got < length:
            piece = await reader.read(4 * MiB)
            if not piece:
                break
            got += len(piece)
        if 0 <= length != got:
            raise RuntimeError(f"GET {url}{path}: {got} of {length} bytes")
        if first is not None and last is not None and status == 206 and got != last - first + 1:
            raise RuntimeError(f"GET {url}{path}: range of {got} bytes")
        return got
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def _timed(coros: list[Any]) -> tuple[float, int]:
    started = time.perf_counter()
    sizes = await asyncio.gather(*coros)
    return time.perf_counter() - started, sum(sizes)


# --- progress -----------------------------------------------------------------------------


class Steps:
    """A rich progress bar over the run's steps (each measured step its own bar)."""

    def __init__(self, out: TextIO) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description:<44}"), BarColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[note]}"), console=Console(file=out), transient=False,
        )  # fmt: skip

    def __enter__(self) -> Steps:
        self.progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.progress.stop()

    @contextlib.asynccontextmanager
    async def step(self, name: str, seconds: float, live: Tally | None = None) -> Any:
        task = self.progress.add_task(name, total=max(seconds, 0.01), note="")
        done = asyncio.Event()
        started = time.perf_counter()

        async def tick() -> None:
            while not done.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(done.wait(), 0.5)
                elapsed = time.perf_counter() - started
                note = f"{live.ok / max(elapsed, 1e-3):,.0f}/s" if live and live.ok else ""
                self.progress.update(task, completed=min(elapsed, seconds), note=note)

        ticker = asyncio.create_task(tick())
        try:
            yield
        finally:
            done.set()
            await ticker
            self.progress.update(task, completed=seconds)


# --- the run ------------------------------------------------------------------------------


def _rate(t: Tally) -> float:
    return round(t.ok / t.elapsed, 1) if t.elapsed else 0.0


def _tally(t: Tally) -> dict[str, Any]:
    return {"calls": t.ok, "calls_per_s": _rate(t), "seconds": round(t.elapsed, 2),
            "refused": t.refused, "client_errors": t.errors}  # fmt: skip


async def bench_delivery(live: Settings, args: Any, out: TextIO) -> int:
    tag = uuid.uuid4().hex[:8]
    state = Path(tempfile.mkdtemp(prefix="dataex-bench-delivery-"))
    static_dir = state / "static"
    static_dir.mkdir()
    size = int(args.file_mb * 1e6)
    out.write(f"writing a {size / 1e6:,.0f} MB file of random bytes …\n")
    sha = await asyncio.to_thread(_write_file, static_dir / FILE_NAME, size)
    settings, admin = await _bench_settings(live, tag, state)
    procs = Processes()
    env = {**os.environ, **settings.to_env()}
    try:
        for part in ("api", "relay", "settlement", "delivery"):
            procs.children[part] = _spawn(
                [sys.executable, "-m", "exchange.cli", "serve", part], env
            )
        up_port, static_port = free_port(), free_port()
        procs.children["upstream"] = _spawn(_granian(up_port), env)
        procs.children["static"] = _spawn(
            _granian(static_port, "--static-path-route", "/static",
                     "--static-path-mount", str(static_dir), "--static-path-expires", "0"),
            env,
        )  # fmt: skip
        api_url = f"http://127.0.0.1:{settings.http_port}"
        upstream_url = f"http://127.0.0.1:{up_port}"
        static_url = f"http://127.0.0.1:{static_port}"
        floor_port, raw_port = free_port(), free_port()
        procs.children["floor"] = _spawn(
            _granian(floor_port, app="benchmarks.delivery_floor:app"),
            env | {"DATAEX_BENCH_UPSTREAM": upstream_url},
        )
        procs.children["raw_floor"] = _spawn(
            [sys.executable, "-m", "benchmarks.delivery_rawfloor", str(raw_port), upstream_url],
            env,
        )
        await _wait_answering(f"{api_url}/health/ready", procs.children["api"])
        await _wait_answering(f"{upstream_url}/api/ping", procs.children["upstream"])
        await _wait_answering(f"{static_url}/api/ping", procs.children["static"])
        for name, port in (("floor", floor_port), ("raw_floor", raw_port)):
            await _wait_answering(f"http://127.0.0.1:{port}/api/ping", procs.children[name])
        return await _measure(args, settings, admin, procs, env, api_url, upstream_url,
                              static_url, (f"http://127.0.0.1:{floor_port}",
                                           f"http://127.0.0.1:{raw_port}"),
                              static_dir / FILE_NAME, sha, out)  # fmt: skip
    finally:
        procs.stop()
        await drop_scratch(live, settings)
        shutil.rmtree(state, ignore_errors=True)


async def _measure(
    args: Any, settings: Settings, admin: str, procs: Processes, env: dict[str, str],
    api_url: str, upstream_url: str, static_url: str, floor_urls: tuple[str, str], file: Path,
    sha: str, out: TextIO,
) -> int:  # fmt: skip
    api = _Http(api_url, 8)
    try:
        out.write(f"setting up the product, plans, buyer and grants at {api_url} …\n")
        size = await asyncio.to_thread(lambda: file.stat().st_size)
        market = await _setup(api, admin, {"name": FILE_NAME, "sha256": sha, "size_bytes": size})
        await _await_active(api, market)
        await api.ok("PUT", f"/v1/products/{market.product}/upstream", market.seller,
                     {"base_url": f"{upstream_url}/api"})  # fmt: skip
        upload_mb_s = await _upload(api, market, file, out)
        report: dict[str, Any] = {
            "config": {"connections": args.connections, "duration_s": args.duration,
                       "rate": args.rate, "file_mb": round(size / 1e6, 1),
                       "downloads": args.downloads, "ranges": args.ranges,
                       "token_samples": args.samples, "suspensions": args.suspensions,
                       "gateway_workers": args.gateway_workers, "cpus": os.cpu_count(),
                       "static_server": "granian static files (--static-path-mount)",
                       "upstream": "6-line ASGI app under granian, 1 worker",
                       "load_client": "benchmarks.trades._Http (keep-alive HTTP/1.1, uvloop)"},
            "upload_mb_per_s": round(upload_mb_s, 1),
        }  # fmt: skip
        with Steps(out) as steps:
            report["calls"] = await _calls(args, settings, market, procs, env, api, upstream_url,
                                           steps)  # fmt: skip
            report["calls"]["floor"] = await _floor(args, floor_urls, upstream_url, steps)
            report["files"] = await _files(args, market, api, api_url, static_url, size, steps)
            report["tokens"] = await _tokens(args, market, api, steps)
            report["suspension"] = await _suspension(args, settings, market, procs, env, api,
                                                     admin, steps)  # fmt: skip
    finally:
        await api.close()
    _targets(report)
    _print(report, out)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = Path(args.out) / f"delivery-{stamp}"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.with_suffix(".json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    _chart(report, target.with_suffix(".png"))
    out.write(f"\nwrote {target.with_suffix('.json')} and {target.with_suffix('.png')}\n")
    return 0


async def _start_gateway(
    procs: Processes, env: dict[str, str], workers: int
) -> tuple[str, subprocess.Popen[bytes]]:
    port = free_port()
    process = _spawn([sys.executable, "-m", "exchange.delivery.gateway", "--port", str(port),
                      "--workers", str(workers)], env)  # fmt: skip
    procs.children[f"gateway-{workers}"] = process
    url = f"http://127.0.0.1:{port}"
    await _wait_answering(f"{url}/health", process)
    return url, process


async def _calls(
    args: Any, settings: Settings, market: Market, procs: Processes, env: dict[str, str],
    api: _Http, upstream_url: str, steps: Steps,
) -> dict[str, Any]:  # fmt: skip
    direct = _Http(upstream_url, args.connections)
    results: dict[str, Any] = {"closed": [], "open": None}
    try:
        for workers in args.gateway_workers:
            gateway_url, _ = await _start_gateway(procs, env, workers)
            gateway = _Http(gateway_url, args.connections)
            try:
                tokens = {plan: await _token(api, market, market.grants[f"{plan}/api"])
                          for plan in ("quota", "meter")}  # fmt: skip
                raws = {
                    plan: _get(gateway, f"/gateway/{market.grants[f'{plan}/api']}/v1/rows",
                               tokens[plan])
                    for plan in ("quota", "meter")
                }  # fmt: skip
                direct_raw = _get(direct, "/api/v1/rows")
                # Warm: connections open, caches and leases filled, not counted.
                warm = min(2.0, args.duration)
                for raw, client in ((direct_raw, direct), *((r, gateway) for r in raws.values())):
                    await closed_loop(client, raw, args.connections, warm)
                row: dict[str, Any] = {"gateway_workers": workers}
                for name, client, raw in (("direct", direct, direct_raw),
                                          ("quota", gateway, raws["quota"]),
                                          ("meter", gateway, raws["meter"])):  # fmt: skip
                    label = f"closed loop {name} ({workers} gw worker{'s' * (workers > 1)})"
                    tally = Tally()
                    async with steps.step(label, args.duration, tally):
                        measured = await closed_loop(client, raw, args.connections, args.duration)
                    row[name] = _tally(measured)
                for plan in ("quota", "meter"):
                    row[plan]["ratio_to_direct"] = (
                        round(row[plan]["calls_per_s"] / row["direct"]["calls_per_s"], 3)
                        if row["direct"]["calls_per_s"]
                        else None
                    )
                results["closed"].append(row)
                if workers == args.gateway_workers[0]:
                    results["open"] = await _open(args, direct, gateway, direct_raw,
                                                  raws["quota"], steps)  # fmt: skip
            finally:
                await gateway.close()
                procs.stop(f"gateway-{workers}")
    finally:
        await direct.close()
    return results


async def _floor(
    args: Any, floor_urls: tuple[str, str], upstream_url: str, steps: Steps
) -> dict[str, Any]:
    """Two pass-through proxies that do none of the gateway's work, beside direct calls, in turn:
    ``floor`` served the way the gateway is (ASGI under granian), ``raw_floor`` on a bare uvloop
    protocol (no HTTP server at all). A gateway does strictly more per call than either, so their
    ratios to the direct calls bound its ratio on this machine."""
    clients = {"direct": _Http(upstream_url, args.connections),
               "floor": _Http(floor_urls[0], args.connections),
               "raw_floor": _Http(floor_urls[1], args.connections)}  # fmt: skip
    try:
        raws = {name: _get(client, "/api/v1/rows") for name, client in clients.items()}
        for name, client in clients.items():
            await closed_loop(client, raws[name], args.connections, min(2.0, args.duration))
        result: dict[str, Any] = {
            "floor_is": "a pass-through ASGI proxy under granian (1 worker), the gateway's HTTP "
            "client: no token, grant, quota, signature or usage record",
            "raw_floor_is": "the same pass-through on a bare uvloop protocol, no HTTP server",
        }
        for name, client in clients.items():
            tally = Tally()
            async with steps.step(f"closed loop {name} (pass-through floors)", args.duration,
                                  tally):  # fmt: skip
                result[name] = _tally(await closed_loop(client, raws[name], args.connections,
                                                        args.duration))  # fmt: skip
        direct = result["direct"]["calls_per_s"]
        for name in ("floor", "raw_floor"):
            result[name]["ratio_to_direct"] = (
                round(result[name]["calls_per_s"] / direct, 3) if direct else None
            )
        return result
    finally:
        for client in clients.values():
            await client.close()


async def _open(
    args: Any, direct: _Http, gateway: _Http, direct_raw: bytes, gateway_raw: bytes, steps: Steps
) -> dict[str, Any]:
    result: dict[str, Any] = {"rate": args.rate}
    for name, client, raw in (("direct", direct, direct_raw), ("gateway", gateway, gateway_raw)):
        async with steps.step(f"open loop {args.rate:g}/s {name}", args.duration):
            tally = await open_loop(client, raw, args.rate, args.duration)
        result[name] = _percentiles(tally.latencies) | {
            "calls_per_s": _rate(tally),
            "refused": tally.refused,
            "client_errors": tally.errors,
        }
    result["overhead_ms"] = {
        q: round(result["gateway"][q] - result["direct"][q], 2)
        for q in ("p50_ms", "p95_ms", "p99_ms")
        if result["gateway"][q] is not None and result["direct"][q] is not None
    }
    return result


async def _files(
    args: Any, market: Market, api: _Http, api_url: str, static_url: str, size: int, steps: Steps
) -> dict[str, Any]:
    grant = market.grants["quota/file"]
    exchange_path = f"/v1/grants/{grant}/files/{FILE_NAME}"
    static_path = f"/static/{FILE_NAME}"
    whole: dict[str, list[float]] = {"exchange": [], "static": []}
    for _ in range(args.downloads):
        token = await _token(api, market, grant)  # a fresh one: it lives 15 minutes
        async with steps.step("whole download, static then exchange", 2 * size / 400e6):
            for name, url, path, bearer in (
                ("static", static_url, static_path, None),
                ("exchange", api_url, exchange_path, token),
            ):
                seconds, got = await _timed([download(url, path, bearer)])
                whole[name].append(got / 1e6 / seconds)
    # Parallel ranges: the file cut into `ranges` pieces, all fetched at once.
    cuts = [size * i // args.ranges for i in range(args.ranges + 1)]
    ranged: dict[str, float] = {}
    token = await _token(api, market, grant)
    async with steps.step(f"{args.ranges} parallel ranges, static then exchange", 2 * size / 600e6):
        # granian's static files ignore Range (a whole 200 each): its baseline is as many whole
        # downloads at once, the aggregate MB/s at the same parallelism.
        seconds, got = await _timed([download(static_url, static_path)
                                     for _ in range(args.ranges)])  # fmt: skip
        ranged["static"] = got / 1e6 / seconds
        seconds, got = await _timed(
            [
                download(api_url, exchange_path, token, cuts[i], cuts[i + 1] - 1)
                for i in range(args.ranges)
            ]
        )
        if got != size:
            raise RuntimeError(f"exchange: ranges gave {got} of {size} bytes")
        ranged["exchange"] = got / 1e6 / seconds
    usage = await api.ok("GET", f"/v1/grants/{grant}/usage", market.buyer)

    def median(values: list[float]) -> float:
        return round(statistics.median(values), 1)

    return {
        "whole": {"exchange_mb_per_s": [round(x, 1) for x in whole["exchange"]],
                  "static_mb_per_s": [round(x, 1) for x in whole["static"]],
                  "exchange_median": median(whole["exchange"]),
                  "static_median": median(whole["static"]),
                  "ratio": round(median(whole["exchange"]) / median(whole["static"]), 3)},
        "ranged": {"baseline": f"granian static ignores Range: {args.ranges} whole downloads"
                               " at once, aggregate MB/s",
                   "exchange_mb_per_s": round(ranged["exchange"], 1),
                   "static_mb_per_s": round(ranged["static"], 1),
                   "ratio": round(ranged["exchange"] / ranged["static"], 3)},
        "metered_usage": usage,
    }  # fmt: skip


async def _tokens(args: Any, market: Market, api: _Http, steps: Steps) -> dict[str, Any]:
    grant = market.grants["quota/api"]
    issue_raw = api.prefix("POST", f"/v1/grants/{grant}/tokens", market.buyer,
                           {"Content-Length": "0"}) + b"\r\n\r\n"  # fmt: skip
    health_raw = _get(api, "/health/live")
    issued, health = Tally(), Tally()
    async with steps.step(f"token issue and /health/live x {args.samples}", args.samples / 200):
        for _ in range(args.samples):  # interleaved, one at a time
            for tally, raw, want in ((issued, issue_raw, 201), (health, health_raw, 200)):
                started = time.perf_counter()
                status, body = await api.send(raw)
                if status == want:
                    tally.ok += 1
                    tally.latencies.append(time.perf_counter() - started)
                else:
                    tally.count(tally.refused, f"{status} {_problem_code(body)}".strip())
    return {
        "issue": _percentiles(issued.latencies) | {"refused": issued.refused},
        "health_live": _percentiles(health.latencies) | {"refused": health.refused},
    }


async def _until(http: _Http, raw: bytes, want: str, limit: float, every: float) -> float | None:
    """Seconds until the polled call answers ``want`` ("ok" or a problem code), or None."""
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < limit:
        status, body = await http.send(raw)
        if (want == "ok" and status == 200) or (status != 200 and _problem_code(body) == want):
            return elapsed
        await asyncio.sleep(every)
    return None


async def _suspension(
    args: Any, settings: Settings, market: Market, procs: Processes, env: dict[str, str],
    api: _Http, admin: str, steps: Steps,
) -> dict[str, Any]:  # fmt: skip
    gateway_url, _ = await _start_gateway(procs, env, 1)
    gateway = _Http(gateway_url, 1)
    grant = market.grants["quota/api"]
    every = 0.005
    result: dict[str, Any] = {"poll_ms": every * 1000, "listing": [], "grant": []}
    try:
        token = await _token(api, market, grant)
        raw = _get(gateway, f"/gateway/{grant}/v1/rows", token)
        if await _until(gateway, raw, "ok", 10, every) is None:
            raise RuntimeError("the gateway does not serve the grant before suspension")
        kinds = (
            ("listing", f"/v1/products/{market.product}/suspend",
             f"/v1/products/{market.product}/reinstate", {"reason": "压测"}),
            ("grant", f"/v1/grants/{grant}/suspend", f"/v1/grants/{grant}/resume", None),
        )  # fmt: skip
        for kind, suspend, lift, lift_body in kinds:
            async with steps.step(f"{kind} suspension → denial x {args.suspensions}",
                                  args.suspensions * 1.5):  # fmt: skip
                for _ in range(args.suspensions):
                    started = time.perf_counter()
                    await api.ok("POST", suspend, admin, {"reason": "压测"})
                    answered = time.perf_counter() - started
                    denied = await _until(gateway, raw, "grant_suspended", 10, every)
                    await api.ok("POST", lift, admin, lift_body)
                    back = await _until(gateway, raw, "ok", 15, every)
                    result[kind].append({
                        "denied_after_s": (round(answered + denied, 3)
                                           if denied is not None else None),
                        "api_answered_s": round(answered, 3),
                        "served_again_after_s": round(back, 3) if back is not None else None,
                    })  # fmt: skip
                    if back is None:
                        raise RuntimeError(f"the grant was not served again after {kind} lifted")
        for kind in ("listing", "grant"):
            times = [r["denied_after_s"] for r in result[kind]]
            known = [t for t in times if t is not None]
            result[f"{kind}_max_s"] = max(known) if len(known) == len(times) and known else None
    finally:
        await gateway.close()
        procs.stop("gateway-1")
    return result


# --- report -------------------------------------------------------------------------------


def _targets(report: dict[str, Any]) -> None:
    calls = report["calls"]
    best_meter = max(row["meter"]["calls_per_s"] for row in calls["closed"])
    best_ratio = max(row["meter"]["ratio_to_direct"] or 0 for row in calls["closed"])
    overhead = calls["open"]["overhead_ms"].get("p99_ms")
    p99 = report["tokens"]["issue"]["p99_ms"]
    susp = report["suspension"]
    report["targets"] = {
        "metered_calls_per_s >= 2000": best_meter >= 2000,
        "metered / direct >= 0.5": best_ratio >= 0.5,
        "gateway overhead p99 at rate <= 10 ms": overhead is not None and overhead <= 10,
        "file download exchange / static >= 0.5 (whole)": report["files"]["whole"]["ratio"] >= 0.5,
        "file download exchange / static >= 0.5 (ranged)":
            report["files"]["ranged"]["ratio"] >= 0.5,
        "token issue p99 <= 20 ms": p99 is not None and p99 <= 20,
        "listing suspension -> denial <= 1 s":
            susp["listing_max_s"] is not None and susp["listing_max_s"] <= 1,
        "grant suspension -> denial <= 1 s":
            susp["grant_max_s"] is not None and susp["grant_max_s"] <= 1,
    }  # fmt: skip


def _print(report: dict[str, Any], out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="dataex bench delivery", show_header=True)
    for name, justify in (("measure", "left"), ("exchange", "right"), ("baseline", "right"),
                          ("ratio / overhead", "right"), ("target", "left")):  # fmt: skip
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    t = report["targets"]

    def mark(key: str) -> str:
        return ("met " if t[key] else "NOT met ") + key

    for row in report["calls"]["closed"]:
        w, d = row["gateway_workers"], row["direct"]
        for plan in ("quota", "meter"):
            r = row[plan]
            errors = sum(r["refused"].values()) + sum(r["client_errors"].values())
            table.add_row(
                f"calls/s {plan} plan, {w} gw worker(s) (errors {errors})",
                f"{r['calls_per_s']:,.0f}", f"direct {d['calls_per_s']:,.0f}",
                f"{r['ratio_to_direct']}x",
                mark("metered / direct >= 0.5") if plan == "meter" else "",
            )  # fmt: skip
    fl = report["calls"]["floor"]
    for name, what in (("floor", "pass-through floor, ASGI under granian"),
                       ("raw_floor", "pass-through floor, bare uvloop protocol")):  # fmt: skip
        table.add_row(f"calls/s {what} (no checks)", f"{fl[name]['calls_per_s']:,.0f}",
                      f"direct {fl['direct']['calls_per_s']:,.0f}",
                      f"{fl[name]['ratio_to_direct']}x", "bounds the gateway's ratio")  # fmt: skip
    o = report["calls"]["open"]
    for q in ("p50_ms", "p95_ms", "p99_ms"):
        table.add_row(
            f"latency {q[:3]} at {o['rate']:g}/s (open loop)", f"{o['gateway'][q]} ms",
            f"direct {o['direct'][q]} ms", f"+{o['overhead_ms'].get(q)} ms",
            mark("gateway overhead p99 at rate <= 10 ms") if q == "p99_ms" else "",
        )  # fmt: skip
    f = report["files"]
    table.add_row("file download MB/s, whole (median)", f"{f['whole']['exchange_median']:,}",
                  f"static {f['whole']['static_median']:,}", f"{f['whole']['ratio']}x",
                  mark("file download exchange / static >= 0.5 (whole)"))  # fmt: skip
    table.add_row(f"file download MB/s, {report['config']['ranges']} parallel ranges",
                  f"{f['ranged']['exchange_mb_per_s']:,}",
                  f"static {f['ranged']['static_mb_per_s']:,}",
                  f"{f['ranged']['ratio']}x",
                  mark("file download exchange / static >= 0.5 (ranged)"))  # fmt: skip
    k = report["tokens"]
    table.add_row("token issue p50 / p99", f"{k['issue']['p50_ms']} / {k['issue']['p99_ms']} ms",
                  f"health/live {k['health_live']['p50_ms']} / {k['health_live']['p99_ms']} ms",
                  "", mark("token issue p99 <= 20 ms"))  # fmt: skip
    s = report["suspension"]
    for kind in ("listing", "grant"):
        each = ", ".join(f"{r['denied_after_s']}" for r in s[kind])
        table.add_row(f"{kind} suspension → denial (s), max", f"{s[f'{kind}_max_s']}",
                      f"each: {each}", "", mark(f"{kind} suspension -> denial <= 1 s"))  # fmt: skip
    table.add_row("upload MB/s (8 MiB chunks, over HTTP)", f"{report['upload_mb_per_s']}", "", "",
                  "")  # fmt: skip
    Console(file=out, width=160).print(table)


def _chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    calls, files, tokens, susp = axes[0][0], axes[0][1], axes[1][0], axes[1][1]
    labels, direct, quota, meter = [], [], [], []
    for row in report["calls"]["closed"]:
        labels.append(f"{row['gateway_workers']} gw worker(s)")
        direct.append(row["direct"]["calls_per_s"])
        quota.append(row["quota"]["calls_per_s"])
        meter.append(row["meter"]["calls_per_s"])
    xs = list(range(len(labels)))
    for offset, values, name in ((-0.27, direct, "direct"), (0, quota, "gateway, quota plan"),
                                 (0.27, meter, "gateway, metered plan")):  # fmt: skip
        calls.bar([x + offset for x in xs], values, width=0.27, label=name)
    _floor_bars(calls, report["calls"]["floor"], labels, xs)
    calls.axhline(2000, color="grey", linestyle=":", label="target 2,000/s")
    calls.set_xticks(xs, labels)
    calls.set_ylabel("calls/s (closed loop)")
    calls.legend(fontsize=8)
    calls.grid(alpha=0.3, axis="y")
    o = report["calls"]["open"]
    qs = ["p50_ms", "p95_ms", "p99_ms"]
    f = report["files"]
    names = ["whole (median)", f"{report['config']['ranges']} ranges"]
    ex = [f["whole"]["exchange_median"], f["ranged"]["exchange_mb_per_s"]]
    st = [f["whole"]["static_median"], f["ranged"]["static_mb_per_s"]]
    files.bar([x - 0.2 for x in range(2)], ex, width=0.4, label="exchange (decrypting, metered)")
    files.bar([x + 0.2 for x in range(2)], st, width=0.4, label="granian static (plaintext)")
    files.set_xticks(range(2), names)
    files.set_ylabel("MB/s")
    files.legend(fontsize=8)
    files.grid(alpha=0.3, axis="y")
    k = report["tokens"]
    groups = [f"open loop {o['rate']:g}/s\ndirect", f"open loop {o['rate']:g}/s\ngateway",
              "token issue", "health/live"]  # fmt: skip
    series = [o["direct"], o["gateway"], k["issue"], k["health_live"]]
    for i, q in enumerate(qs):
        tokens.bar([x + (i - 1) * 0.25 for x in range(4)], [s[q] or 0 for s in series],
                   width=0.25, label=q[:3])  # fmt: skip
    tokens.set_xticks(range(4), groups, fontsize=8)
    tokens.set_ylabel("ms")
    tokens.legend(fontsize=8)
    tokens.grid(alpha=0.3, axis="y")
    for kind, marker in (("listing", "o"), ("grant", "s")):
        values = [r["denied_after_s"] for r in susp_rows(report, kind)]
        susp.plot(range(1, len(values) + 1), values, marker=marker,
                  label=f"{kind} suspended → grant_suspended")  # fmt: skip
    susp.axhline(1.0, color="grey", linestyle=":", label="target 1 s")
    susp.set_xlabel("repeat")
    susp.set_ylabel("seconds")
    susp.legend(fontsize=8)
    susp.grid(alpha=0.3)
    c = report["config"]
    fig.suptitle(f"dataex bench delivery — {c['connections']} connections, {c['duration_s']:g} s"
                 f" each, {c['file_mb']:g} MB file, {c['cpus']} CPUs")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _floor_bars(calls: Any, floor: dict[str, Any], labels: list[str], xs: list[int]) -> None:
    labels.append("pass-through floors")
    xs.append(len(xs))
    calls.bar([xs[-1] - 0.27], [floor["direct"]["calls_per_s"]], width=0.27, color="C0")
    calls.bar([xs[-1]], [floor["floor"]["calls_per_s"]], width=0.27, color="C3",
              label="pass-through, ASGI under granian (no checks)")  # fmt: skip
    calls.bar([xs[-1] + 0.27], [floor["raw_floor"]["calls_per_s"]], width=0.27, color="C4",
              label="pass-through, bare uvloop protocol (no checks)")  # fmt: skip


def susp_rows(report: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = report["suspension"][kind]
    return [r for r in rows if r["denied_after_s"] is not None]
