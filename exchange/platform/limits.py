"""Limits on what one client may ask of an API process: request rate and JSON nesting depth.

Rate limiting is GCRA (the generic cell rate algorithm, a token bucket kept as one number per
key: the theoretical arrival time of the next request). Buckets live in this process's memory,
so checking a request costs a dict look-up and no database round trip; the price is that the
limit holds per API process (`DATAEX_API_WORKERS` workers, or several API processes behind a
load balancer, each allow the configured rate). Keys:

- a request with a bearer token: that token (valid or not: the limiter runs before the token is
  looked up, so a flood of requests costs no database work once its bucket is empty);
- a request without one: the client address;
- every 401 answer to a request that carried a token is also charged to the client address, and
  an address whose failure bucket is empty gets 429 for any token, so guessing tokens, or
  rotating bogus ones to dodge the per-token bucket, is throttled by address.

Health probes are exempt. `InputGuardMiddleware` refuses JSON bodies deeper than
`MAX_JSON_DEPTH` (msgspec and the problem handlers would otherwise recurse until Python's
recursion limit: a 500), NUL characters anywhere (PostgreSQL text cannot store them: a 500
too) and integers beyond `MAX_JSON_INTEGER` (RFC 8785 refuses them when a digest is taken: a
500 again), each with a problem naming the field.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send

from exchange.platform.errors import DataexError, FieldError
from exchange.platform.validation import decode_json

MAX_JSON_DEPTH: Final = 32
# The largest integer every JSON reader keeps exact (an IEEE double's) and RFC 8785, whose
# canonical JSON the exchange signs and digests, accepts; I-JSON (RFC 7493) asks for no more.
MAX_JSON_INTEGER: Final = 2**53 - 1
_LONG_DIGITS: Final = re.compile(rb"[0-9]{16}")  # any integer beyond it has 16 digits or more
# Longest path or query parameter value, in characters: ids, codes, cursors and search text are
# all far shorter, and an error echoing a megabyte-long parameter back helps no one.
MAX_PARAMETER_CHARS: Final = 1000
EXEMPT_PREFIXES: Final = ("/health/",)
_SWEEP_EVERY_S: Final = 1.0


class TooManyRequests(DataexError):
    status = 429
    code = "too_many_requests"
    title = "Too many requests"

    def __init__(self, detail: str, *, retry_after_s: int) -> None:
        super().__init__(detail, extensions={"retry_after_s": retry_after_s})
        self.retry_after_s = retry_after_s


class JsonTooDeep(DataexError):
    status = 400
    code = "json_too_deep"
    title = "The JSON body is nested too deeply"


@dataclass(slots=True)
class Gcra:
    """A token bucket of ``burst`` requests refilled at ``rate`` per second, for many keys.

    ``take`` answers 0.0 when the request may proceed (and charges it), else the seconds until
    it would. Idle keys are dropped by `sweep`: a key whose bucket is full again carries no
    information, so memory stays proportional to the clients seen in the last ``burst / rate``
    seconds.
    """

    rate: float
    burst: int
    interval: float = field(init=False)
    tolerance: float = field(init=False)
    arrivals: dict[str, float] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        if self.rate <= 0 or self.burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.interval = 1.0 / self.rate
        self.tolerance = self.interval * self.burst

    def take(self, key: str, now: float) -> float:
        tat = max(self.arrivals.get(key, now), now)
        new_tat = tat + self.interval
        excess = new_tat - now - self.tolerance
        if excess > 0:
            return excess
        self.arrivals[key] = new_tat
        return 0.0

    def wait(self, key: str, now: float) -> float:
        """Like `take` but charges nothing: how long until ``key`` could be served."""
        tat = max(self.arrivals.get(key, now), now)
        return max(0.0, tat + self.interval - now - self.tolerance)

    def sweep(self, now: float) -> None:
        for key in [k for k, tat in self.arrivals.items() if tat <= now]:
            del self.arrivals[key]


@dataclass(slots=True)
class RateLimits:
    """The buckets of one API process. A rate of 0 turns that kind of limit off."""

    per_token: Gcra | None
    anonymous: Gcra | None
    clock: Callable[[], float] = time.monotonic
    _swept: float = 0.0

    @classmethod
    def configured(cls, per_second: int, burst: int, anonymous_per_second: int) -> RateLimits:
        return cls(
            per_token=Gcra(per_second, max(burst, 1)) if per_second > 0 else None,
            anonymous=(
                Gcra(anonymous_per_second, 2 * anonymous_per_second)
                if anonymous_per_second > 0
                else None
            ),
        )

    @property
    def enabled(self) -> bool:
        return self.per_token is not None or self.anonymous is not None

    def admit(self, token: str | None, address: str) -> float:
        """0.0 to serve the request, else the seconds the client should wait."""
        now = self.clock()
        if now - self._swept > _SWEEP_EVERY_S:
            self._swept = now
            for bucket in (self.per_token, self.anonymous):
                if bucket is not None:
                    bucket.sweep(now)
        if token is None:
            return self.anonymous.take(f"ip:{address}", now) if self.anonymous else 0.0
        if self.anonymous is not None:
            failing = self.anonymous.wait(f"fail:{address}", now)
            if failing > 0:
                return failing
        return self.per_token.take(token, now) if self.per_token else 0.0

    def failed_authentication(self, address: str) -> None:
        if self.anonymous is not None:
            self.anonymous.take(f"fail:{address}", self.clock())


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


def _bearer(scope: Scope) -> str | None:
    header = _header(scope, b"authorization")
    if header is None:
        return None
    scheme, _, token = header.decode("latin-1").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token[:200]  # longer tokens are refused as unknown anyway


def _address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class RateLimitMiddleware:
    """Answers 429 with ``Retry-After`` once a token's (or an address's) bucket is empty."""

    def __init__(self, app: ASGIApp, limits: RateLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != ScopeType.HTTP
            or not self.limits.enabled
            or scope["path"].startswith(EXEMPT_PREFIXES)
        ):
            await self.app(scope, receive, send)
            return
        token = _bearer(scope)
        address = _address(scope)
        wait = self.limits.admit(token, address)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            who = "this token" if token is not None else f"the address {address}"
            raise TooManyRequests(
                f"too many requests from {who}; retry after {seconds} s"
                " (the limit is per API process)",
                retry_after_s=seconds,
            )
        if token is None:
            await self.app(scope, receive, send)
            return

        async def send_watching(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                self.limits.failed_authentication(address)
            await send(message)

        await self.app(scope, receive, send_watching)


def _is_json(scope: Scope) -> bool:
    content_type = (_header(scope, b"content-type") or b"").split(b";", 1)[0].strip().lower()
    return content_type == b"application/json" or content_type.endswith(b"+json")


def too_deep_at(body: bytes, limit: int = MAX_JSON_DEPTH) -> str | None:
    """The path at which ``body`` nests deeper than ``limit``, or None (also for invalid JSON).

    Cheap for the common case: a body with at most ``limit`` brackets cannot be too deep, and
    counting them is done in C.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return None
    try:
        value = decode_json(body)
    except RecursionError:
        return "$"
    except msgspec.DecodeError:
        return None  # not JSON: the handler reports it as malformed
    return _deep_path(value, limit) if _deeper_than(value, limit) else None


def _deeper_than(value: Any, limit: int) -> bool:
    """Level by level, keeping only containers: a wide body costs comprehensions, not calls."""
    level = [value] if isinstance(value, dict | list) else []
    for _ in range(limit):
        level = [
            child
            for node in level
            for child in (node.values() if type(node) is dict else node)
            if type(child) is dict or type(child) is list
        ]
        if not level:
            return False
    return True


def _deep_path(node: Any, limit: int, depth: int = 1) -> str | None:
    """Depth-first, building a path only on the way back from a node that is too deep."""
    if isinstance(node, dict):
        items: Any = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return None
    if depth > limit:
        return "$"
    for key, child in items:
        inner = _deep_path(child, limit, depth + 1)
        if inner is not None:
            return _step(key, inner)
    return None


def _step(key: Any, inner: str) -> str:
    """The path of ``inner`` (a path below ``key``; "$": ``key`` itself) from key's parent."""
    step = f"[{key}]" if isinstance(key, int) else str(key)
    if inner == "$":
        return step
    return f"{step}{inner}" if inner.startswith("[") else f"{step}.{inner}"


class InputGuardMiddleware:
    """Refuses, before any handler or database sees them, inputs no field may carry.

    - a JSON body nested deeper than `MAX_JSON_DEPTH` (400 ``json_too_deep``, naming the path);
    - a NUL character (``\\u0000`` in JSON, ``%00`` in the query, NUL in the path): PostgreSQL
      text cannot hold one, so it would fail deep in a query as a 500 (422 ``nul_character``);
    - a path, or a query parameter, longer than `MAX_PARAMETER_CHARS` (400
      ``parameter_too_long``), which the OpenAPI document states as each string parameter's
      ``maxLength`` where the parameter has no shorter one;
    - an integer in a JSON body beyond ±`MAX_JSON_INTEGER`, whatever field carries it: stored
      and later put in a digest or a signed document it fails there as a 500 (422
      ``integer_out_of_range``).

    The checks cost three scans in C for an ordinary request; only a suspicious body is decoded
    a second time to name the offending field.
    """

    def __init__(self, app: ASGIApp, limit: int = MAX_JSON_DEPTH) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        if "\x00" in scope["path"]:
            raise _nul("path", "$", "path")
        if len(scope["path"]) > MAX_PARAMETER_CHARS:
            raise _too_long("path", "path")
        query = scope.get("query_string", b"")
        if b"%00" in query or b"\x00" in query:
            raise _nul("query", _nul_parameter(query), "query")
        if len(query) > MAX_PARAMETER_CHARS:
            for name, value in _parameters(query):
                if len(value) > MAX_PARAMETER_CHARS or len(name) > MAX_PARAMETER_CHARS:
                    raise _too_long(name[:100] or "$", "query")
        if not _is_json(scope):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        limit = self.limit

        async def checked_receive() -> ReceiveMessage:
            message = await receive()
            if message["type"] != "http.request":
                return message
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                check_json_body(body, limit)
            return message

        await self.app(scope, checked_receive, send)


def check_json_body(body: bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """Raise `JsonTooDeep`, `NulCharacter` or `IntegerOutOfRange` for a body no handler should
    see."""
    path = too_deep_at(body, limit)
    if path is not None:
        raise JsonTooDeep(
            f"the body nests objects and arrays deeper than {limit} levels at {path}",
            errors=[
                FieldError(path=path, message=f"nested deeper than {limit} levels", source="body")
            ],
        )
    nul = b"\\u0000" in body
    long_number = _LONG_DIGITS.search(body) is not None  # or a long string of digits
    if not (nul or long_number):
        return
    try:
        value = decode_json(body)
    except msgspec.DecodeError:
        return  # not JSON: the handler reports it as malformed
    where = _nul_path(value) if nul else None
    if where is not None:
        raise _nul("body", where, "body")
    where = _integer_path(value) if long_number else None
    if where is not None:
        raise IntegerOutOfRange(
            f"the integer at {where} is beyond ±{MAX_JSON_INTEGER} (2^53 - 1), the largest JSON"
            " readers and canonical JSON (RFC 8785) keep exact",
            errors=[
                FieldError(
                    path=where, message=f"beyond ±{MAX_JSON_INTEGER} (2^53 - 1)", source="body"
                )
            ],
            extensions={"max_integer": MAX_JSON_INTEGER},
        )


def _parameters(query: bytes) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return parse_qsl(query.decode("latin-1"), keep_blank_values=True)


def _nul_parameter(query: bytes) -> str:
    for name, value in _parameters(query):
        if "\x00" in name or "\x00" in value:
            return name.replace("\x00", "") or "$"
    return "$"


class ParameterTooLong(DataexError):
    status = 400
    code = "parameter_too_long"
    title = "A path or query parameter is too long"


def _too_long(path: str, source: str) -> ParameterTooLong:
    return ParameterTooLong(
        f"the {source} parameter {path} is longer than {MAX_PARAMETER_CHARS} characters",
        errors=[
            FieldError(
                path=path, message=f"longer than {MAX_PARAMETER_CHARS} characters", source=source
            )
        ],
    )


def _first_path(node: Any, leaf: Callable[[Any], bool], key: Callable[[str], bool]) -> str | None:
    """The path of the first value ``leaf`` refuses, or of the first object key ``key``
    refuses (the key itself, shown readably), in document order; None when all pass."""
    if isinstance(node, dict):
        items: Any = node.items()
    elif isinstance(node, list):
        items = enumerate(node)
    else:
        return "$" if leaf(node) else None
    for name, child in items:
        if isinstance(name, str) and key(name):
            return name.replace("\x00", "\\u0000")
        inner = _first_path(child, leaf, key)
        if inner is not None:
            return _step(name, inner)
    return None


def _nul_path(node: Any) -> str | None:
    return _first_path(node, lambda v: isinstance(v, str) and "\x00" in v, lambda k: "\x00" in k)


def _integer_path(node: Any) -> str | None:
    # type() is int: a bool is no integer here
    return _first_path(
        node, lambda v: type(v) is int and abs(v) > MAX_JSON_INTEGER, lambda _k: False
    )


class IntegerOutOfRange(DataexError):
    status = 422
    code = "integer_out_of_range"
    title = "The request contains an integer JSON cannot carry exactly"


class NulCharacter(DataexError):
    status = 422
    code = "nul_character"
    title = "The request contains a NUL character"


def _nul(where: str, path: str, source: str) -> NulCharacter:
    return NulCharacter(
        f"a NUL character (U+0000) in the {where} at {path}: no text field may contain one",
        errors=[FieldError(path=path, message="contains a NUL character", source=source)],
    )
