"""``dataex bench settlement`` and ``dataex bench ledger``: figures, not tests.

Both run in a database and a stream of their own on the configured (or embedded) servers and
remove them afterwards, so an exchange's data is never touched.

settlement: seeds a seller, buyers with deposits and N executed trades (orders and contracts
written with COPY, then N ``dx.trade.executed`` events published to JetStream), starts the given
number of real settlement worker processes (``dataex serve settlement``) and measures settled
trades per second from the first to the last settled trade; repeats for each worker count with
fresh trades; then runs pgbench TPC-B (scale 10, 8 clients) on the same server and prints the
ratio.

ledger: appends N entries (a signed tree head every 1,000) and times ``dataex ledger verify``.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
import subprocess
import time
import uuid
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import unquote, urlsplit, urlunsplit

import asyncpg
import msgspec

from benchmarks.scratch import drop_scratch, scratch_settings
from exchange.identity.uscc import synthetic_uscc
from exchange.platform.bus import connect_nats
from exchange.platform.clock import SystemClock
from exchange.platform.db import connect, create_pool
from exchange.platform.events import TradeExecuted, TradeExecutedData, TradeParty
from exchange.platform.settings import Settings
from exchange.platform.signing import KeyRing, load_master_key
from settlement import book, ledger

PRICE = 10_000
FEE = 100


async def seed_parties(
    conn: asyncpg.Connection, buyers: int, deposit: int = 10**12
) -> tuple[Any, list[Any], Any]:
    """A seller with one listed product and buyers with ``deposit`` fen each (0: none)."""
    now = datetime.now(UTC)
    contact = {"name": "基准", "email": "bench@example.cn", "phone": "+86 21 0000 0000"}
    base = uuid.uuid4().int % 31**8  # distinct codes on every call
    seller = (uuid.uuid4(), synthetic_uscc(base))
    buyer_rows = [(uuid.uuid4(), synthetic_uscc(base + 1 + i)) for i in range(buyers)]
    everyone = [seller, *buyer_rows]
    await conn.execute(
        "INSERT INTO organisations (id, name, uscc, roles, region, contact, created_at, updated_at)"
        " SELECT i, n, u, ARRAY['seller', 'buyer'], '310000', $4::jsonb, $5, $5"
        " FROM unnest($1::uuid[], $2::text[], $3::text[]) AS x(i, n, u)",
        [o for o, _ in everyone], [f"基准机构{n}" for n in range(len(everyone))],
        [u for _, u in everyone], contact, now,
    )  # fmt: skip
    product = uuid.uuid4()
    await conn.execute(
        "INSERT INTO products (id, seller_org_id, state, live_revision, product_code,"
        " created_at, updated_at) VALUES ($1, $2, 'listed', 1, $3, $4, $4)",
        product, seller[0], f"DX-BENCH-{base}", now,
    )  # fmt: skip
    # Money in: one deposit per buyer, enough for every trade it will make.
    accounts = book.Book(conn)
    deposits = [book.deposit(org, deposit, f"bench-{org}") for org, _ in buyer_rows if deposit]
    async with conn.transaction():
        await accounts.lock(deposits)
        made, _ = accounts.plan(deposits)
        await accounts.write(made, now)
    return seller, buyer_rows, product


ORDER_COLUMNS = ["id", "buyer_org_id", "seller_org_id", "product_id", "revision", "plan_id",
                 "terms", "state", "cross_border", "sensitive_pi", "pi_subject_count",
                 "price_fen", "fee_fen", "decision", "created_at", "updated_at",
                 "executed_at"]  # fmt: skip
CONTRACT_COLUMNS = ["id", "order_id", "template", "document", "digest", "text_zh", "state",
                    "created_at", "executed_at", "expires_at"]  # fmt: skip
_JSONB = {"terms", "decision", "document"}


def _staging(table: str, columns: list[str]) -> str:
    """An empty SELECT of ``table``'s named columns, jsonb ones as text (no constraints)."""
    cells = ", ".join(f"{c}::text AS {c}" if c in _JSONB else c for c in columns)
    return f"SELECT {cells} FROM {table} WITH NO DATA"


def _insert(table: str, staging: str, columns: list[str]) -> str:
    cells = ", ".join(f"{c}::jsonb" if c in _JSONB else c for c in columns)
    return f"INSERT INTO {table} ({', '.join(columns)}) SELECT {cells} FROM {staging}"


async def seed_trades(
    conn: asyncpg.Connection, n: int, seller: Any, buyers: list[Any], product: uuid.UUID
) -> list[TradeExecutedData]:
    """``n`` executed orders and contracts (price PRICE, fee FEE), buyers in turn; returns the
    ``dx.trade.executed`` data the contracts service would have emitted for them."""
    now = datetime.now(UTC)
    orders, contracts, events = [], [], []
    decision = '{"outcome": "allow", "hits": [], "list_version": "bench"}'
    marker = '{"bench": true}'
    for i in range(n):
        buyer = buyers[i % len(buyers)]
        order_id, trade_id = uuid.uuid4(), uuid.uuid4()
        digest = "sha256:" + hashlib.sha256(trade_id.bytes).hexdigest()
        orders.append((order_id, buyer[0], seller[0], product, 1, "auto", marker, "executed",
                       False, False, 0, PRICE, FEE, decision, now, now, now))  # fmt: skip
        contracts.append((trade_id, order_id, "data-provision", marker, digest, "基准",
                          "executed", now, now, now))  # fmt: skip
        events.append(
            TradeExecutedData(
                trade_id=str(trade_id), order_id=str(order_id), contract_digest=digest,
                buyer=TradeParty(str(buyer[0]), f"基准机构{i % len(buyers)}", buyer[1]),
                seller=TradeParty(str(seller[0]), "基准机构0", seller[1]),
                product_code="DX-BENCH-0001", price_fen=PRICE, fee_fen=FEE, acceptance_days=3,
                executed_at=now.isoformat(),
            )
        )  # fmt: skip
    # COPY into staging tables of the named columns, jsonb ones as text (asyncpg has no binary
    # COPY encoder for jsonb), then INSERT naming the same columns: the others take defaults.
    await conn.execute(
        f"CREATE TEMP TABLE IF NOT EXISTS bench_orders AS {_staging('orders', ORDER_COLUMNS)};"
        " CREATE TEMP TABLE IF NOT EXISTS bench_contracts AS"
        f" {_staging('trade_contracts', CONTRACT_COLUMNS)};"
        " TRUNCATE bench_orders, bench_contracts"
    )
    await conn.copy_records_to_table("bench_orders", columns=ORDER_COLUMNS, records=orders)
    await conn.copy_records_to_table("bench_contracts", columns=CONTRACT_COLUMNS, records=contracts)
    await conn.execute(
        f"{_insert('orders', 'bench_orders', ORDER_COLUMNS)};"
        f" {_insert('trade_contracts', 'bench_contracts', CONTRACT_COLUMNS)}"
    )
    return events


async def publish_executed(settings: Settings, events: list[TradeExecutedData]) -> float:
    assert settings.nats_url
    client = await connect_nats(settings.nats_url, name="dataex-bench")
    js = client.jetstream()
    subject = settings.subject("trade", "executed")
    started = time.perf_counter()
    now = datetime.now(UTC)
    try:
        for start in range(0, len(events), 256):
            chunk = events[start : start + 256]
            payloads = [
                (str(uuid.uuid4()), msgspec.json.encode(TradeExecuted(
                    id="", source="urn:dataex:bench", type="dx.trade.executed", time=now,
                    subject=e.trade_id, data=e)))
                for e in chunk
            ]  # fmt: skip
            await asyncio.gather(
                *(js.publish(subject, body, headers={"Nats-Msg-Id": mid},
                             stream=settings.stream_name) for mid, body in payloads)
            )  # fmt: skip
    finally:
        await client.close()
    return time.perf_counter() - started


def _spawn_workers(settings: Settings, count: int) -> list[subprocess.Popen[bytes]]:
    from exchange.runtime import spawn_part

    return [spawn_part("settlement", settings) for _ in range(count)]


def _stop(children: list[subprocess.Popen[bytes]]) -> None:
    from exchange.runtime import stop_parts

    stop_parts({str(i): child for i, child in enumerate(children)}, 3.0)


async def _await_settled(conn: asyncpg.Connection, target: int, limit: float) -> float:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        done = await conn.fetchval(
            "SELECT count(*) FROM settlement_trades WHERE state <> 'pending'"
        )
        if done >= target:
            return time.monotonic()
        await asyncio.sleep(0.2)
    raise TimeoutError(f"only {done} of {target} trades settled in {limit:.0f}s")


def pgbench(database_url: str, seconds: int, out: IO[str]) -> float:
    """TPC-B-like tps on the given server (scale 10, 8 clients, 2 threads)."""
    from exchange.platform.embedded import _pg_bin

    binary = str(_pg_bin() / "pgbench")
    env = {**os.environ, "PGOPTIONS": "-c synchronous_commit=on"}
    # The password goes in the environment, not on the command line that `ps` shows anyone.
    parts = urlsplit(database_url)
    if parts.password is not None:
        env["PGPASSWORD"] = unquote(parts.password)
        netloc = f"{parts.username or ''}@{parts.netloc.rpartition('@')[2]}"
        database_url = urlunsplit(parts._replace(netloc=netloc))
    subprocess.run([binary, "-i", "-q", "-s", "10", database_url], check=True,
                   capture_output=True, env=env)  # fmt: skip
    result = subprocess.run(
        [binary, "-c", "8", "-j", "2", "-T", str(seconds), "-n", database_url],
        check=True, capture_output=True, text=True, env=env,
    )  # fmt: skip
    match = re.search(r"tps = ([0-9.]+)", result.stdout)
    if not match:
        out.write(result.stdout)
        raise RuntimeError("pgbench printed no tps")
    return float(match.group(1))


async def bench_settlement(live: Settings, args: Any, out: IO[str]) -> int:
    tag = uuid.uuid4().hex[:8]
    settings, _ = await scratch_settings(live, tag)
    assert settings.database_url
    conn = await connect(settings.database_url)
    results = []
    try:
        out.write(f"seeding {args.buyers} buyers with deposits ...\n")
        seller, buyers, product = await seed_parties(conn, args.buyers)
        for workers in args.workers:
            already = await conn.fetchval("SELECT count(*) FROM settlement_trades")
            out.write(f"[{workers} worker(s)] writing {args.trades} executed trades ...\n")
            events = await seed_trades(conn, args.trades, seller, buyers, product)
            seconds = await publish_executed(settings, events)
            out.write(f"[{workers} worker(s)] published {len(events)} events in {seconds:.1f}s;"
                      " starting workers\n")  # fmt: skip
            started = time.monotonic()
            children = _spawn_workers(settings, workers)
            try:
                finished = await _await_settled(conn, already + args.trades, 900)
            finally:
                _stop(children)
            span_row = await conn.fetchrow(
                "SELECT min(updated_at), max(updated_at) FROM settlement_trades"
                " WHERE trade_id = ANY($1::uuid[])",
                [uuid.UUID(e.trade_id) for e in events],
            )
            assert span_row is not None
            span = max((span_row[1] - span_row[0]).total_seconds(), 1e-6)
            results.append((workers, args.trades / span, finished - started))
            out.write(f"[{workers} worker(s)] {args.trades / span:,.0f} settled/s"
                      f" (first to last settled, {span:.1f}s); {finished - started:.1f}s"
                      " including process start\n")  # fmt: skip
        verify = io.StringIO()
        from settlement.cli import verify_database

        status = await verify_database(settings.database_url, verify)
        out.write(verify.getvalue())
        tps = await asyncio.to_thread(pgbench, settings.database_url, args.pgbench_seconds, out)
    finally:
        await conn.close()
        await drop_scratch(live, settings)
    out.write(f"\npgbench TPC-B (scale 10, 8 clients, {args.pgbench_seconds}s): {tps:,.0f} tps\n")
    out.write("workers  settled/s  ratio to pgbench tps\n")
    for workers, rate, _wall in results:
        out.write(f"{workers:>7}  {rate:>9,.0f}  {rate / tps:>6.2f}\n")
    return status


async def bench_ledger(live: Settings, entries: int, out: IO[str]) -> int:
    tag = uuid.uuid4().hex[:8]
    settings, _ = await scratch_settings(live, tag)
    assert settings.database_url
    pool = await create_pool(settings.database_url, min_size=1, max_size=2)
    try:
        keyring = KeyRing(load_master_key(settings.state_dir.resolve()))
        cache = ledger.LedgerTree()
        party = ledger.EntryParty(str(uuid.uuid4()), synthetic_uscc(7))
        started = time.perf_counter()
        written = 0
        while written < entries:
            count = min(1_000, entries - written)
            drafts = [
                ledger.EntryDraft(uuid.uuid4(), "reserved", "sha256:" + "ab" * 32,
                                  "DX-BENCH-0001", party, party, PRICE, FEE, uuid.uuid4())
                for _ in range(count)
            ]  # fmt: skip
            now = SystemClock().now()
            async with pool.acquire() as conn, conn.transaction():
                await ledger.append(conn, settings.exchange_code, drafts, now)
            async with pool.acquire() as conn, conn.transaction():
                await ledger.sign_tree_head(conn, cache, keyring, settings.exchange_code,
                                            SystemClock().now())  # fmt: skip
            written += count
        out.write(f"appended {entries:,} entries in {time.perf_counter() - started:.1f}s\n")
        from settlement.cli import verify_database

        started = time.perf_counter()
        status = await verify_database(settings.database_url, out)
        out.write(f"`dataex ledger verify` on {entries:,} entries: "
                  f"{time.perf_counter() - started:.2f}s\n")  # fmt: skip
    finally:
        await pool.close()
        await drop_scratch(live, settings)
    return status
