"""What a seller runs in front of its API so that only the exchange's gateway can call it.

The gateway signs every call it forwards (RFC 9421, Ed25519, the exchange's delivery key; see
`exchange.delivery.httpsig`). `GatewayVerifier` checks such a call: the signature against the
exchange's JWKS (``/.well-known/jwks.json``, cached, fetched again when a call names a key it
does not know — a rotation), that it covers the method, authority, path, query, the grant and
usage-id headers and, when there is a body, ``Content-Digest``; that the digest matches the
body; that the signature is fresh (``created`` not in the future, ``expires`` not past, both
within a few seconds of skew); and that its usage id was not seen before (a replay).

Use it as an ASGI middleware (`RequireGatewaySignature`) or call `GatewayVerifier.verify` /
`verify_call` from any framework. It needs only the standard library and ``cryptography``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.request
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from exchange.delivery import httpsig

SKEW_SECONDS: Final = 5
REFETCH_SECONDS: Final = 10.0  # an unknown keyid fetches the JWKS again at most this often


class GatewayCallRefused(httpsig.SignatureError):
    """Why a call is not the gateway's: ``reason`` is one of the codes below."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class GatewayCall:
    """A verified call: which grant, which buyer, which usage record it is billed under."""

    grant_id: str
    buyer_uscc: str | None
    usage_id: str
    keyid: str
    created: int


def delivery_keys(jwks: Mapping[str, Any]) -> dict[str, Ed25519PublicKey]:
    """The exchange's delivery keys (``dataex_purpose: delivery``) of a JWKS, by kid."""
    keys: dict[str, Ed25519PublicKey] = {}
    for jwk in jwks.get("keys", []):
        if jwk.get("dataex_purpose") != "delivery" or jwk.get("crv") != "Ed25519":
            continue
        raw = base64.urlsafe_b64decode(jwk["x"] + "=" * (-len(jwk["x"]) % 4))
        keys[jwk["kid"]] = Ed25519PublicKey.from_public_bytes(raw)
    return keys


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    return None if value is None else value.strip()


def _signature_of(headers: Mapping[str, str]) -> tuple[list[str], dict[str, Any], bytes]:
    """The covered components, parameters and signature bytes of the ``dataex`` signature."""
    signature_input = _header(headers, "signature-input")
    signature = _header(headers, "signature")
    if not signature_input or not signature:
        raise GatewayCallRefused("signature_missing", "no Signature-Input and Signature headers")
    try:
        inputs = httpsig.parse_dictionary(signature_input)
        values = httpsig.parse_dictionary(signature)
    except httpsig.SignatureError as error:
        raise GatewayCallRefused("signature_malformed", str(error)) from error
    member, value = inputs.get(httpsig.LABEL), values.get(httpsig.LABEL)
    if member is None or value is None:
        raise GatewayCallRefused("signature_missing", f"no signature labelled {httpsig.LABEL!r}")
    inner, params = member
    if not isinstance(inner, list) or not isinstance(value[0], bytes):
        raise GatewayCallRefused("signature_malformed", "Signature-Input is not an inner list")
    covered = [item for item, item_params in inner if isinstance(item, str) and not item_params]
    if len(covered) != len(inner) or len(set(covered)) != len(covered):
        raise GatewayCallRefused("signature_malformed", "components must be distinct names")
    return covered, params, value[0]


def verify_call(
    keys: Mapping[str, Ed25519PublicKey],
    *,
    method: str,
    authority: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    now: float | None = None,
    skew: int = SKEW_SECONDS,
) -> GatewayCall:
    """Check one call against the delivery keys. ``headers``: lower-case names, repeated
    fields joined with ", "; ``query`` without its ``?``; ``path`` as received (encoded)."""
    covered, params, signature = _signature_of(headers)
    keyid = params.get("keyid")
    if params.get("alg") != httpsig.ALG or params.get("tag") != httpsig.TAG:
        raise GatewayCallRefused("signature_malformed", "not a dataex-gateway ed25519 signature")
    missing = [c for c in httpsig.REQUIRED if c not in covered]
    if body and httpsig.DIGEST_HEADER not in covered:
        missing.append(httpsig.DIGEST_HEADER)
    if missing:
        raise GatewayCallRefused("signature_incomplete", f"the signature must cover {missing}")
    created, expires = params.get("created"), params.get("expires")
    current = time.time() if now is None else now
    if not isinstance(created, int) or not isinstance(expires, int):
        raise GatewayCallRefused("signature_malformed", "created and expires are required")
    if created > current + skew or expires < current - skew:
        raise GatewayCallRefused(
            "signature_stale", f"signed for {created}..{expires}, now is {int(current)}"
        )
    public = keys.get(keyid) if isinstance(keyid, str) else None
    if public is None:
        raise GatewayCallRefused("signature_unknown_key", f"{keyid!r} is not a delivery key")
    derived = {
        "@method": method.upper(),
        "@authority": authority.lower(),
        "@path": path or "/",
        "@query": f"?{query}",
    }
    components = []
    for name in covered:
        value = derived.get(name) if name.startswith("@") else _header(headers, name)
        if value is None:
            raise GatewayCallRefused("signature_incomplete", f"the call has no {name}")
        components.append((name, value))
    base = httpsig.signature_base(components, httpsig.signature_params(covered, params))
    try:
        public.verify(signature, base)
    except InvalidSignature as error:
        raise GatewayCallRefused("signature_invalid", "the signature does not verify") from error
    digest = _header(headers, httpsig.DIGEST_HEADER)
    if digest is not None and digest != httpsig.content_digest(body):
        raise GatewayCallRefused("digest_mismatch", "Content-Digest does not match the body")
    return GatewayCall(
        grant_id=_header(headers, httpsig.GRANT_HEADER) or "",
        buyer_uscc=_header(headers, httpsig.BUYER_HEADER),
        usage_id=_header(headers, httpsig.USAGE_HEADER) or "",
        keyid=str(keyid),
        created=created,
    )


def fetch_jwks(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """``GET`` the exchange's JWKS (blocking; `GatewayVerifier` runs it in a thread)."""
    if not url.startswith(("https://", "http://")):
        raise ValueError(f"the JWKS URL must be http(s): {url!r}")
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (checked above)
        document: dict[str, Any] = json.load(response)
    return document


class GatewayVerifier:
    """Verifies gateway calls for one upstream: keys cached, replays refused.

    ``jwks_url``: the exchange's ``/.well-known/jwks.json``. ``authority``: the host[:port] the
    gateway calls (as registered with the exchange), when a proxy in front of the upstream
    rewrites ``Host``. ``fetch``: how the JWKS is read (tests pass their own)."""

    def __init__(
        self,
        jwks_url: str,
        *,
        authority: str | None = None,
        skew: int = SKEW_SECONDS,
        fetch: Callable[[str], Awaitable[Mapping[str, Any]]] | None = None,
    ) -> None:
        self.jwks_url = jwks_url
        self.authority = authority
        self.skew = skew
        self._fetch = fetch or (lambda url: asyncio.to_thread(fetch_jwks, url))
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._fetched_at = -REFETCH_SECONDS
        self._seen: dict[str, int] = {}  # usage id -> its signature's expiry

    async def refresh(self) -> None:
        self._keys = delivery_keys(await self._fetch(self.jwks_url))
        self._fetched_at = time.monotonic()

    async def verify(
        self,
        *,
        method: str,
        authority: str,
        path: str,
        query: str,
        headers: Mapping[str, str],
        body: bytes,
        now: float | None = None,
    ) -> GatewayCall:
        """`verify_call` with the cached keys (fetched again on an unknown keyid) and the
        replay check."""
        kwargs: dict[str, Any] = {
            "method": method, "authority": self.authority or authority, "path": path,
            "query": query, "headers": headers, "body": body, "now": now, "skew": self.skew,
        }  # fmt: skip
        try:
            call = verify_call(self._keys, **kwargs)
        except GatewayCallRefused as error:
            if error.reason != "signature_unknown_key":
                raise
            if time.monotonic() - self._fetched_at < REFETCH_SECONDS and self._keys:
                raise
            await self.refresh()
            call = verify_call(self._keys, **kwargs)
        self._refuse_replay(call, time.time() if now is None else now)
        return call

    def _refuse_replay(self, call: GatewayCall, now: float) -> None:
        if call.usage_id in self._seen:
            raise GatewayCallRefused("replayed", f"usage id {call.usage_id} was already called")
        if len(self._seen) > 100_000:
            self._seen = {k: v for k, v in self._seen.items() if v + self.skew >= now}
        self._seen[call.usage_id] = call.created + httpsig.LIFETIME_SECONDS


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RequireGatewaySignature:
    """ASGI middleware: HTTP calls without a valid gateway signature get a 401 problem; the
    others reach ``app`` with the verified call in ``scope["state"]["dataex"]``.

    The body is read whole before the app sees it (the digest covers it): put a size limit in
    front, as for any upstream. ``max_body_bytes`` refuses larger bodies with 413."""

    def __init__(
        self, app: ASGIApp, verifier: GatewayVerifier, max_body_bytes: int = 10 * 2**20
    ) -> None:
        self.app = app
        self.verifier = verifier
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_body_bytes:
                await _refuse(send, 413, "body_too_large", "the request body is too large")
                return
        body = b"".join(chunks)
        try:
            call = await self.verifier.verify(
                method=scope["method"], authority=headers.get("host", ""),
                path=scope.get("raw_path", scope["path"].encode()).decode("latin-1").split("?")[0],
                query=scope.get("query_string", b"").decode("latin-1"), headers=headers, body=body,
            )  # fmt: skip
        except GatewayCallRefused as error:
            await _refuse(send, 401, error.reason, error.detail)
            return
        scope.setdefault("state", {})["dataex"] = call
        sent = False

        async def replay() -> MutableMapping[str, Any]:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


async def _refuse(send: Send, status: int, code: str, detail: str) -> None:
    body = json.dumps({
        "type": f"urn:dataex:problem:{code}", "title": "Not a call from the exchange's gateway",
        "status": status, "detail": detail, "code": code,
    }).encode()  # fmt: skip
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", b"application/problem+json"),
                    (b"content-length", str(len(body)).encode())],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})
