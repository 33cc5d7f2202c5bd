"""`dataex bench trades`: its report and chart from a run (the load itself is a benchmark)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os

from benchmarks import trades as loadbench


def _args(**overrides):
    defaults = {
        "duration": 3.0,
        "warmup": 0.0,
        "concurrency": 4,
        "rate": None,
        "sellers": 1,
        "buyers": 2,
        "api_workers": 2,
        "url": None,
        "pgbench": False,
        "out": None,
    }
    return argparse.Namespace(**(defaults | overrides))


def _run():
    run = loadbench.Run(started=100.0)
    for second, (count, latency) in enumerate([(10, 0.010), (20, 0.020), (30, 0.030)]):
        for _ in range(count):
            s = run.at(100.0 + second + 0.5)
            s.accepted += 1
            s.executed += 1
            s.latencies.append(latency)
        run.at(100.0 + second + 0.5).settled = count
    run.error("HTTP 429", 101.2)
    return run


def _settled(drain_s, e2e):
    """What the ledger query returns: 60 trades settled over ``drain_s`` seconds."""
    start = dt.datetime(2026, 11, 22, tzinfo=dt.UTC)
    return {"trades": 60, "first": start, "last": start + dt.timedelta(seconds=drain_s), "e2e": e2e}


def test_the_report_counts_rates_percentiles_and_the_pgbench_ratio():
    settled = _settled(drain_s=3, e2e=[0.05, 0.08, 0.1])
    report = loadbench._report(
        _args(pgbench=True), _run(), 3.0, settled, 600.0, [("api", 10, 70.0)], 0.3
    )
    assert report["client_cpu_ms_per_order"] == 5.0  # 300 ms of the client's CPU over 60 orders
    assert report["orders_accepted"] == 60 and report["orders_accepted_per_s"] == 20.0
    assert report["contracts_executed_per_s"] == 20.0
    assert report["trades_settled_per_s"] == 20.0
    assert report["settled_per_pgbench_tps"] == round(20.0 / 600.0, 3)
    assert report["order_latency_ms"]["p50"] == 25.0  # between the 30th (20 ms) and 31st (30 ms)
    assert report["order_latency_ms"]["p99"] == 30.0
    assert report["order_to_settled_ms"] == {"p50": 50.0, "p95": 80.0, "p99": 100.0}
    assert report["errors"] == {"HTTP 429": 1}
    assert [t["accepted"] for t in report["timeline"]] == [10, 20, 30]
    assert report["timeline"][1]["errors"] == 1
    assert report["peak_rss_mib"] == [{"process": "api", "pid": 10, "mib": 70.0}]


def test_a_slow_drain_lowers_the_settled_rate():
    settled = _settled(drain_s=6, e2e=[1.0, 2.0, 3.0])
    report = loadbench._report(_args(), _run(), 3.0, settled, None, [])
    assert report["trades_settled_per_s"] == 10.0  # 60 over the 6 s it took, not the 3 s run
    assert report["pgbench_tps"] is None and report["settled_per_pgbench_tps"] is None
    assert report["client_cpu_ms_per_order"] is None  # not measured


def test_the_table_json_and_chart_are_written(tmp_path):
    settled = _settled(drain_s=3, e2e=[0.05, 0.08, 0.1])
    report = loadbench._report(_args(rate=20.0), _run(), 3.0, settled, None, [])
    out = tmp_path / "table.txt"
    with out.open("w") as handle:
        loadbench._print(report, handle)
    text = out.read_text()
    assert "open loop at 20.0/s" in text and "20.0/s" in text
    warmed = loadbench._report(_args(warmup=10.0), _run(), 3.0, settled, None, [])
    table = tmp_path / "warmed.txt"
    with table.open("w") as handle:
        loadbench._print(warmed, handle)
    assert "after 10 s warm-up" in table.read_text()
    assert "load client CPU per order" not in table.read_text()
    measured = loadbench._report(_args(), _run(), 3.0, settled, None, [], 0.3)
    with table.open("w") as handle:
        loadbench._print(measured, handle)
    assert "load client CPU per order" in table.read_text() and "5.0 ms" in table.read_text()
    json.dumps(report)  # serialisable as written
    chart = tmp_path / "chart.png"
    loadbench._chart(report, chart)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 10_000


def test_peak_rss_finds_the_processes_of_an_exchange_by_their_command_line(tmp_path):
    import subprocess
    import sys

    child = subprocess.Popen(  # a stand-in named like the relay part: only its name matters
        [sys.executable, "-c", "import time; time.sleep(30)", "serve", "relay"]
    )
    try:
        import time

        deadline = time.monotonic() + 10
        rows: list[tuple[str, int, float]] = []
        while not rows and time.monotonic() < deadline:
            # The session's embedded PostgreSQL and NATS are this process's children too.
            rows = [row for row in loadbench.peak_rss(os.getpid()) if row[1] == child.pid]
            time.sleep(0.05)
        assert [(label, pid) for label, pid, _ in rows] == [("relay", child.pid)]
        assert rows[0][2] > 1
    finally:
        child.kill()
        child.wait()


async def _server(handler):
    """A tiny HTTP/1.1 server: ``handler(request_head, body, writer)`` answers each request."""
    import asyncio

    connections = []

    async def serve(reader, writer):
        connections.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length) if length else b""
                if not await handler(head, body, writer):
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", connections


async def _lean_client_round():
    import asyncio

    import msgspec

    seen = []

    async def handler(head, body, writer):
        path = head.split(b" ")[1].decode()
        seen.append((path, head, body))
        if path == "/drop":
            return False  # closed without an answer
        payload = msgspec.json.encode({"path": path, "state": "executed"})
        close = b"Connection: close\r\n" if path == "/close" else b""
        response = b"HTTP/1.1 201 Created\r\ncontent-length: %d\r\n%s\r\n" % (len(payload), close)
        writer.write(response + payload[:5])  # the body in two pieces
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(payload[5:])
        await writer.drain()
        return not close

    server, url, connections = await _server(handler)
    http = loadbench._Http(url, 1)
    try:
        assert await http.ok("POST", "/a", "tok", {"x": 1}) == {"path": "/a", "state": "executed"}
        assert (await http.call("GET", "/b", "tok"))[1]["path"] == "/b"
        assert len(connections) == 1  # kept alive
        assert b"Authorization: Bearer tok" in seen[0][1] and seen[0][2] == b'{"x":1}'
        assert (await http.call("GET", "/close", "tok"))[0] == 201
        assert (await http.call("GET", "/c", "tok"))[0] == 201
        assert len(connections) == 2  # reopened after Connection: close

        market = loadbench.Market(["p1", "p2"], ["t1", "t2"], ["o1", "o2"])
        orders = loadbench._Orders.of(http, market)
        run = loadbench.Run(started=0.0)
        await loadbench._place(http, orders, 1, run, 0.0)
        order_head, order_body = seen[-1][1], seen[-1][2]
        assert order_head.startswith(b"POST /v1/orders HTTP/1.1\r\n")
        assert b"Authorization: Bearer t2\r\n" in order_head and b"Idempotency-Key: " in order_head
        assert msgspec.json.decode(order_body) == loadbench._order("p2")
        assert sum(s.accepted for s in run.seconds) == 1
        assert sum(s.executed for s in run.seconds) == 1

        drop = loadbench._Orders([http.prefix("POST", "/drop", "t", {"X-Key": ""})], orders.tails)
        await loadbench._place(http, drop, 0, run, 0.0)
        assert run.errors == {"ServerDisconnectedError": 1}  # counted, not fatal
        await loadbench._place(http, orders, 0, run, 0.0)  # and a new connection after it
        assert sum(s.accepted for s in run.seconds) == 2 and len(connections) == 3
    finally:
        await http.close()
        await asyncio.sleep(0.05)  # the server's side sees the ends and finishes its tasks
        server.close()
        await server.wait_closed()


async def test_the_lean_client_keeps_connections_alive_reads_split_responses_and_reconnects():
    await _lean_client_round()


def test_the_lean_client_runs_on_uvloop_as_the_cli_runs_it():
    import uvloop  # its transports are no asyncio.Transport subclasses

    uvloop.run(_lean_client_round())
