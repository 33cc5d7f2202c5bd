"""Forwarding a buyer's call to the seller's upstream, and reading its answer back.

aiohttp is the client: on this machine it made 9,400 calls/s over keep-alive connections where
httpx made 310 (32 concurrent callers; 1,380 with one), and the gateway makes one call per
request. Headers that belong to a hop (RFC 9110 §7.6.1) never cross; neither do the buyer's
``Authorization`` (its delivery token is for the exchange, not the seller), nor any header the
gateway sets itself (``Dataex-*``, the signature, ``Content-Digest``), so a buyer cannot forge
them. Answers are read whole (up to `MAX_ANSWER_BYTES`) because nothing is released to the
buyer before its usage is recorded, and ``bytes`` and the upstream's custom units are only known
at the end; an answer too large for that is a 502 problem (files go through file delivery).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from exchange.delivery.quota import USE_MARGIN_SECONDS
from exchange.platform.errors import DataexError
from exchange.platform.metering import METERING_HEADER

# Shorter than the margin a lease keeps before its expiry, so a call that took a unit records it
# under a lease still open.
UPSTREAM_TIMEOUT_SECONDS: Final = 10.0
CONNECT_TIMEOUT_SECONDS: Final = 3.0
MAX_ANSWER_BYTES: Final = 16 * 2**20
assert UPSTREAM_TIMEOUT_SECONDS + 2 < USE_MARGIN_SECONDS

HOP_BY_HOP: Final = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "transfer-encoding", "upgrade",
})  # fmt: skip
# Request headers the gateway drops (besides hop-by-hop and any ``dataex-*``): the buyer's
# token, what the gateway computes itself, and what the client library sets.
NOT_FORWARDED: Final = HOP_BY_HOP | {
    "authorization", "host", "content-length", "signature", "signature-input", "content-digest",
}  # fmt: skip
# Answer headers the buyer does not get: hop-by-hop, the length (set again) and the metering
# report, which is between the seller and the exchange.
NOT_RETURNED: Final = HOP_BY_HOP | {"content-length", METERING_HEADER}


class UpstreamFailed(DataexError):
    status = 502
    code = "upstream_unavailable"
    title = "The seller's upstream could not be reached or did not answer properly"


class UpstreamTimeout(UpstreamFailed):
    status = 504
    code = "upstream_timeout"
    title = "The seller's upstream did not answer in time"


class UpstreamAnswerTooLarge(UpstreamFailed):
    code = "upstream_answer_too_large"
    title = "The seller's upstream answered with more than the gateway forwards"


@dataclass(frozen=True, slots=True)
class Target:
    """Where a product's calls go: the upstream's origin, the authority the gateway signs (what
    the client sends as ``Host``) and the base path each call's path is appended to."""

    origin: str
    authority: str
    base_path: str

    @classmethod
    def of(cls, base_url: str) -> Target:
        parts = urlsplit(base_url)
        host = (parts.hostname or "").lower()
        if ":" in host:
            host = f"[{host}]"
        default = {"http": 80, "https": 443}.get(parts.scheme)
        authority = host if parts.port in (None, default) else f"{host}:{parts.port}"
        return cls(f"{parts.scheme}://{authority}", authority, parts.path.rstrip("/"))


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]  # to return to the buyer
    body: bytes
    metering: str | None  # the upstream's ``X-Dataex-Metering`` report


def _connection_tokens(headers: list[tuple[bytes, bytes]]) -> set[str]:
    """Header names a ``Connection`` header declares hop-by-hop."""
    return {
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.decode("latin-1").split(",")
    }


def request_headers(raw: list[tuple[bytes, bytes]]) -> CIMultiDict[str]:
    """The buyer's headers that go on to the upstream."""
    dropped = NOT_FORWARDED | _connection_tokens(raw)
    out: CIMultiDict[str] = CIMultiDict()
    for raw_name, raw_value in raw:
        name = raw_name.decode("latin-1").lower()
        if name not in dropped and not name.startswith("dataex-"):
            out.add(name, raw_value.decode("latin-1"))
    return out


def answer_headers(
    raw: tuple[tuple[bytes, bytes], ...],
) -> tuple[list[tuple[bytes, bytes]], str | None]:
    """The upstream's headers the buyer gets, and the metering report among them."""
    dropped = NOT_RETURNED | _connection_tokens(list(raw))
    kept: list[tuple[bytes, bytes]] = []
    metering = None
    for raw_name, raw_value in raw:
        name = raw_name.decode("latin-1").lower()
        if name == METERING_HEADER:
            metering = raw_value.decode("latin-1")
        if name not in dropped:
            kept.append((name.encode("latin-1"), raw_value))
    return kept, metering


class Forwarder:
    """One process's HTTP client to every upstream (keep-alive connections pooled)."""

    def __init__(
        self,
        timeout: float = UPSTREAM_TIMEOUT_SECONDS,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        connections: int = 256,
    ) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout, connect=CONNECT_TIMEOUT_SECONDS)
        self.max_answer_bytes = max_answer_bytes
        self.connections = connections
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.connections, ttl_dns_cache=60),
            timeout=self.timeout,
            auto_decompress=False,  # bytes pass through as the upstream encoded them
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, method: str, url: str, headers: CIMultiDict[str], body: bytes) -> Answer:
        """Send one call (``url`` already percent-encoded) and read its answer whole."""
        assert self._session is not None, "start() the forwarder first"
        try:
            async with self._session.request(
                method, URL(url, encoded=True), headers=headers, data=body or None,
                allow_redirects=False,
            ) as response:  # fmt: skip
                if (response.content_length or 0) > self.max_answer_bytes:
                    raise UpstreamAnswerTooLarge(
                        f"the answer has {response.content_length} bytes; the gateway forwards"
                        f" at most {self.max_answer_bytes}"
                    )
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.content.iter_any():
                    size += len(chunk)
                    if size > self.max_answer_bytes:
                        raise UpstreamAnswerTooLarge(
                            f"the answer exceeds the {self.max_answer_bytes} bytes the gateway"
                            " forwards"
                        )
                    chunks.append(chunk)
                kept, metering = answer_headers(response.raw_headers)
                return Answer(response.status, kept, b"".join(chunks), metering)
        except TimeoutError as error:
            raise UpstreamTimeout(
                f"no answer within {self.timeout.total:.0f} s from {URL(url).origin()}"
            ) from error
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as error:
            raise UpstreamFailed(f"{type(error).__name__}: {error}") from error
