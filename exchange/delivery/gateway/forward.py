"""Forwarding a buyer's call to the seller's upstream, and reading its answer back.

Headers that belong to a hop (RFC 9110 §7.6.1) never cross; neither do the buyer's
``Authorization`` (its delivery token is for the exchange, not the seller), ``Expect`` (the body
is already read), nor any header the gateway sets itself (``Dataex-*``, the signature,
``Content-Digest``), so a buyer cannot forge them. Answers are read whole (up to
`MAX_ANSWER_BYTES`) because nothing is released to the buyer before its usage is recorded, and
``bytes`` and the upstream's custom units are only known at the end; an answer too large for
that is a 502 problem (files go through file delivery). The HTTP client is the gateway's own
(`exchange.delivery.gateway.client`, and why).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

from exchange.delivery.gateway.client import AnswerTooLarge, Client, ClientError, Origin
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
    "authorization", "host", "content-length", "expect", "signature", "signature-input",
    "content-digest",
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
    """Where a product's calls go: the upstream's origin, the authority the gateway signs and
    sends as ``Host``, and the base path each call's path is appended to."""

    origin: Origin
    authority: str
    base_path: str

    @classmethod
    def of(cls, base_url: str) -> Target:
        parts = urlsplit(base_url)
        host = (parts.hostname or "").lower()
        default = {"http": 80, "https": 443}[parts.scheme]
        port = parts.port or default
        shown = f"[{host}]" if ":" in host else host
        authority = shown if port == default else f"{shown}:{port}"
        return cls(Origin(parts.scheme, host, port), authority, parts.path.rstrip("/"))


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]  # to return to the buyer
    body: bytes
    metering: str | None  # the upstream's ``X-Dataex-Metering`` report


_NOT_FORWARDED = frozenset(n.encode() for n in NOT_FORWARDED)
_NOT_RETURNED = frozenset(n.encode() for n in NOT_RETURNED)
_METERING = METERING_HEADER.encode()


def _connection_tokens(headers: list[tuple[bytes, bytes]]) -> set[bytes]:
    """Header names a ``Connection`` header declares hop-by-hop (names lower-case)."""
    return {
        token.strip().lower()
        for name, value in headers
        if name.lower() == b"connection"
        for token in value.split(b",")
    }


def request_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The buyer's headers that go on to the upstream, names lower-cased."""
    dropped = _NOT_FORWARDED | _connection_tokens(raw)
    kept = []
    for raw_name, value in raw:
        name = raw_name.lower()
        if name not in dropped and not name.startswith(b"dataex-"):
            kept.append((name, value))
    return kept


def answer_headers(raw: list[tuple[bytes, bytes]]) -> tuple[list[tuple[bytes, bytes]], str | None]:
    """The upstream's headers the buyer gets, and the metering report among them (names are
    lower-case already)."""
    dropped = _NOT_RETURNED | _connection_tokens(raw)
    kept = [(name, value) for name, value in raw if name not in dropped]
    metering = next((v.decode("latin-1") for n, v in raw if n == _METERING), None)
    return kept, metering


class Forwarder:
    """One process's calls to every upstream, with a total timeout each."""

    def __init__(
        self,
        timeout: float = UPSTREAM_TIMEOUT_SECONDS,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self.timeout = timeout
        self.max_answer_bytes = max_answer_bytes
        self._client = Client(connect_timeout=CONNECT_TIMEOUT_SECONDS)

    async def close(self) -> None:
        await self._client.close()

    async def call(
        self,
        method: str,
        target: Target,
        path_and_query: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> Answer:
        """Send one call (``path_and_query`` already percent-encoded), read its answer whole."""
        try:
            async with asyncio.timeout(self.timeout):
                raw = await self._client.request(
                    target.origin, method, path_and_query, headers, body, self.max_answer_bytes
                )
        except TimeoutError as error:
            raise UpstreamTimeout(
                f"no answer within {self.timeout:.0f} s from {target.authority}"
            ) from error
        except AnswerTooLarge as error:
            raise UpstreamAnswerTooLarge(
                f"{error}; the gateway forwards at most {self.max_answer_bytes}"
            ) from error
        except ClientError as error:
            raise UpstreamFailed(f"{target.authority}: {error}") from error
        kept, metering = answer_headers(raw.headers)
        return Answer(raw.status, kept, raw.body, metering)
