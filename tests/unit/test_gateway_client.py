"""The gateway's HTTP/1.1 client against a scripted server on a local port: bodies by length,
chunks and the connection's end, 1xx answers, HEAD, keep-alive reuse and a stale pooled
connection; and the headers that cross (or not) in each direction."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from exchange.delivery.gateway.client import AnswerTooLarge, Client, ClientError, Origin
from exchange.delivery.gateway.forward import Target, answer_headers, request_headers


class Scripted:
    """Answers each request with the next scripted bytes; ``close_after`` closes the connection
    after that many answers on it."""

    def __init__(self, answers: list[bytes], close_after: int | None = None) -> None:
        self.answers = answers
        self.close_after = close_after
        self.requests: list[bytes] = []
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                self.requests.append(head + await reader.readexactly(length))
                writer.write(self.answers.pop(0))
                await writer.drain()
                served += 1
                if self.close_after is not None and served >= self.close_after:
                    break
        except asyncio.IncompleteReadError:
            pass
        writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Scripted], asyncio.Future[Origin]]]:
    servers: list[asyncio.Server] = []

    async def start(script: Scripted) -> Origin:
        server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
        servers.append(server)
        return Origin("http", "127.0.0.1", server.sockets[0].getsockname()[1])

    yield start  # type: ignore[misc]
    for server in servers:
        server.close()


OK = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-dataex-metering: rows=2\r\n\r\nhello"


async def test_answers_by_length_reuse_the_connection(serve):
    script = Scripted([OK, OK])
    origin = await serve(script)
    client = Client()
    for _ in range(2):
        answer = await client.request(origin, "GET", "/a?b=1", [(b"host", b"x")], b"", 1000)
        assert (answer.status, answer.body, answer.keep_alive) == (200, b"hello", True)
        assert (b"x-dataex-metering", b"rows=2") in answer.headers
    assert script.connections == 1
    assert script.requests[0] == b"GET /a?b=1 HTTP/1.1\r\nhost: x\r\n\r\n"
    await client.close()


async def test_a_body_goes_with_its_length(serve):
    script = Scripted([OK])
    client = Client()
    await client.request(await serve(script), "POST", "/", [], b'{"q":1}', 1000)
    assert script.requests[0].endswith(b'content-length: 7\r\n\r\n{"q":1}')
    await client.close()


async def test_chunked_answers_are_joined_and_their_trailers_dropped(serve):
    chunked = (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
               b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n")  # fmt: skip
    client = Client()
    answer = await client.request(await serve(Scripted([chunked])), "GET", "/", [], b"", 1000)
    assert answer.body == b"hello world" and answer.keep_alive
    with pytest.raises(AnswerTooLarge):
        await client.request(await serve(Scripted([chunked])), "GET", "/", [], b"", 8)
    await client.close()


async def test_an_answer_without_length_ends_with_the_connection(serve):
    script = Scripted([b"HTTP/1.0 200 OK\r\n\r\nuntil the end"], close_after=1)
    client = Client()
    answer = await client.request(await serve(script), "GET", "/", [], b"", 1000)
    assert (answer.body, answer.keep_alive) == (b"until the end", False)
    await client.close()


async def test_informational_answers_are_skipped_and_head_has_no_body(serve):
    script = Scripted([b"HTTP/1.1 100 Continue\r\n\r\n" + OK,
                       b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n"])  # fmt: skip
    origin = await serve(script)
    client = Client()
    assert (await client.request(origin, "GET", "/", [], b"", 1000)).body == b"hello"
    head = await client.request(origin, "HEAD", "/", [], b"", 1000)
    assert (head.status, head.body) == (200, b"")
    await client.close()


async def test_a_pooled_connection_closed_by_the_upstream_is_replaced_once(serve):
    script = Scripted([OK, OK], close_after=1)
    origin = await serve(script)
    client = Client()
    await client.request(origin, "GET", "/", [], b"", 1000)
    await asyncio.sleep(0.05)  # the upstream closes its side
    assert (await client.request(origin, "GET", "/", [], b"", 1000)).body == b"hello"
    assert (script.connections, len(script.requests)) == (2, 2)
    await client.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"SMTP 220 hello\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n folded: no\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
    ],
)
async def test_unreadable_answers_are_client_errors(serve, answer):
    client = Client()
    with pytest.raises(ClientError):
        await client.request(await serve(Scripted([answer], close_after=1)), "GET", "/", [], b"",
                             1000)  # fmt: skip
    await client.close()


async def test_a_large_answer_is_refused_before_it_is_read(serve):
    big = b"HTTP/1.1 200 OK\r\ncontent-length: 5000\r\n\r\n" + b"x" * 5000
    client = Client()
    with pytest.raises(AnswerTooLarge):
        await client.request(await serve(Scripted([big])), "GET", "/", [], b"", 4096)
    await client.close()


async def test_an_unreachable_upstream_is_a_client_error():
    client = Client(connect_timeout=1)
    with pytest.raises(ClientError, match="cannot connect"):
        await client.request(Origin("http", "127.0.0.1", 9), "GET", "/", [], b"", 10)


def test_only_end_to_end_headers_of_the_buyer_reach_the_upstream():
    buyer = [(b"Authorization", b"Bearer t"), (b"Connection", b"keep-alive, X-Hop"),
             (b"x-hop", b"1"), (b"Dataex-Grant", b"forged"), (b"signature", b"forged"),
             (b"Host", b"gw"), (b"Expect", b"100-continue"), (b"Content-Type", b"text/csv"),
             (b"Accept", b"*/*"), (b"Transfer-Encoding", b"chunked")]  # fmt: skip
    assert request_headers(buyer) == [(b"content-type", b"text/csv"), (b"accept", b"*/*")]


def test_the_buyer_gets_the_answer_without_hop_headers_or_the_metering_report():
    raw = [(b"content-type", b"application/json"), (b"x-dataex-metering", b"rows=3"),
           (b"connection", b"close"), (b"content-length", b"5"), (b"etag", b'"1"')]  # fmt: skip
    kept, metering = answer_headers(raw)
    assert kept == [(b"content-type", b"application/json"), (b"etag", b'"1"')]
    assert metering == "rows=3"


@pytest.mark.parametrize(
    ("base_url", "authority", "origin", "base_path"),
    [
        ("http://Api.Example.cn/v2/", "api.example.cn", ("http", "api.example.cn", 80), "/v2"),
        ("https://api.example.cn:443", "api.example.cn", ("https", "api.example.cn", 443), ""),
        ("http://127.0.0.1:8080/x", "127.0.0.1:8080", ("http", "127.0.0.1", 8080), "/x"),
        ("http://[::1]:81", "[::1]:81", ("http", "::1", 81), ""),
    ],
)
def test_a_base_url_gives_the_origin_the_signed_authority_and_the_base_path(
    base_url, authority, origin, base_path
):
    target = Target.of(base_url)
    assert (target.authority, target.origin, target.base_path) == (
        authority, Origin(*origin), base_path)  # fmt: skip
