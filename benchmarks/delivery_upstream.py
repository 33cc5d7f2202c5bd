"""The local upstream of ``dataex bench delivery``: a seller's API answering a small JSON body at
once, served by granian (``benchmarks.delivery_upstream:app``), and the same app as the plain
static file server's host (granian's own static route answers before the app is called)."""

from __future__ import annotations

from typing import Any

BODY = b'{"rows":[1,2,3],"ok":true}'
HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(BODY)).encode()),
    (b"x-dataex-metering", b"rows=3"),
]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
