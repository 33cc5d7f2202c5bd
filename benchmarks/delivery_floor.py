"""The floor of ``dataex bench delivery``: a pass-through proxy with nothing of the gateway's work
— no token, grant, quota, signature or usage record — served the way the gateway is (an ASGI app
under granian, one worker) and forwarding with the gateway's own HTTP client to the upstream
named by ``DATAEX_BENCH_UPSTREAM``. Its calls/s is what any gateway of this shape reaches on this
machine at best, so its ratio to the direct calls bounds the gateway's (``benchmarks.delivery``
measures the three in the same run)."""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlsplit

from exchange.delivery.gateway.client import Client, Origin

_upstream = urlsplit(os.environ.get("DATAEX_BENCH_UPSTREAM", "http://127.0.0.1:1"))
ORIGIN = Origin("http", _upstream.hostname or "127.0.0.1", _upstream.port or 80)
HOST = [(b"host", _upstream.netloc.encode())]
_CLIENT: list[Client] = []  # made at start-up, in the server's event loop


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _CLIENT.append(Client())
                await send({"type": "lifespan.startup.complete"})
            else:
                for client in _CLIENT:
                    await client.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    target = scope["raw_path"].decode("latin-1")
    if scope["query_string"]:
        target += "?" + scope["query_string"].decode("latin-1")
    answer = await _CLIENT[0].request(ORIGIN, scope["method"], target, HOST, b"", 1 << 20)
    headers = [
        (n, v)
        for n, v in answer.headers
        if n not in (b"connection", b"keep-alive", b"transfer-encoding")
    ]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body})
