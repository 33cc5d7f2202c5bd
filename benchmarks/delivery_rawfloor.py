"""The lowest floor of ``dataex bench delivery``: a pass-through proxy on a bare uvloop protocol —
no HTTP server, no ASGI, a request's head split off at its blank line and nothing checked —
forwarding GETs with the gateway's own HTTP client. It is not a server anyone should run (no
bodies, no limits, no errors answered); it measures the least any Python proxy costs on this
machine, below which no gateway written in Python can go however little it checks.

``python -m benchmarks.delivery_rawfloor PORT UPSTREAM_URL``"""

from __future__ import annotations

import asyncio
import sys
from typing import cast
from urllib.parse import urlsplit

import uvloop

from exchange.delivery.gateway.client import Client, Origin

DROPPED = (b"connection", b"keep-alive", b"transfer-encoding", b"content-length")


class _Proxy(asyncio.Protocol):
    def __init__(self, client: Client, origin: Origin, host: bytes) -> None:
        self.client, self.origin, self.host = client, origin, [(b"host", host)]
        self.heads: asyncio.Queue[bytes] = asyncio.Queue()
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's: not a subclass
        self.task = asyncio.get_running_loop().create_task(self._answer())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            self.heads.put_nowait(head)

    def connection_lost(self, exc: Exception | None) -> None:
        self.task.cancel()

    async def _answer(self) -> None:
        while True:  # in order: HTTP/1.1 answers a connection's requests one after another
            method, target, _ = (await self.heads.get()).split(b"\r\n", 1)[0].split(b" ", 2)
            answer = await self.client.request(
                self.origin, method.decode(), target.decode("latin-1"), self.host, b"", 1 << 20
            )
            headers = b"".join(
                name + b": " + value + b"\r\n"
                for name, value in answer.headers
                if name not in DROPPED
            )
            self.transport.write(
                b"HTTP/1.1 %d -\r\n%scontent-length: %d\r\n\r\n%s"
                % (answer.status, headers, len(answer.body), answer.body)
            )


async def serve(port: int, upstream: str) -> None:
    parts = urlsplit(upstream)
    origin = Origin("http", parts.hostname or "127.0.0.1", parts.port or 80)
    client = Client()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Proxy(client, origin, parts.netloc.encode()), "127.0.0.1", port
    )
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(serve(int(sys.argv[1]), sys.argv[2]))
