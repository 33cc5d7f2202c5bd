"""RFC 9421 signatures as the gateway makes them, checked three ways: against the RFC's own
Ed25519 test vector (B.2.6), by a verifier written from the RFC text (tests.kit.rfc9421), and
by the upstream helper sellers run, including every refusal it gives."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import load_der_private_key
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.delivery import httpsig
from exchange.delivery.upstream import (
    GatewayCallRefused,
    GatewayVerifier,
    RequireGatewaySignature,
    delivery_keys,
    verify_call,
)
from exchange.platform.signing import public_jwk
from tests.kit import rfc9421

NOW = 1_800_000_000
KID = "test-delivery-key"

# RFC 9421 Appendix B.1.4 (test-key-ed25519) and B.2.6 (its published signature).
RFC_KEY = "MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF"
RFC_B26 = "wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw=="


def test_the_signature_base_reproduces_the_rfc_ed25519_example():
    private = load_der_private_key(base64.b64decode(RFC_KEY), password=None)
    assert isinstance(private, Ed25519PrivateKey)
    covered = ["date", "@method", "@path", "@authority", "content-type", "content-length"]
    params = httpsig.signature_params(covered, {"created": 1618884473, "keyid": "test-key-ed25519"})
    assert params == ('("date" "@method" "@path" "@authority" "content-type" "content-length")'
                      ';created=1618884473;keyid="test-key-ed25519"')  # fmt: skip
    values = ["Tue, 20 Apr 2021 02:07:55 GMT", "POST", "/foo", "example.com", "application/json",
              "18"]  # fmt: skip
    base = httpsig.signature_base(zip(covered, values, strict=True), params)
    assert base64.b64encode(private.sign(base)).decode() == RFC_B26


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def jwks_of(key: Ed25519PrivateKey, kid: str = KID) -> dict[str, Any]:
    return {"keys": [public_jwk(key.public_key(), kid, "delivery")]}


def signed_call(
    key,
    *,
    body=b'{"q":1}',
    path="/v2/rows",
    query="limit=5",
    uscc="91350100M000100Y43",
    created=NOW,
    kid=KID,
    usage="2b7f2a1e-0000-4000-8000-000000000001",
):
    headers = {httpsig.GRANT_HEADER: "3f1c6a2e-0000-4000-8000-0000000000aa",
               httpsig.USAGE_HEADER: usage}  # fmt: skip
    if uscc:
        headers[httpsig.BUYER_HEADER] = uscc
    if body:
        headers[httpsig.DIGEST_HEADER] = httpsig.content_digest(body)
    signed = httpsig.sign(key, kid, method="post", authority="Upstream.example:8443", path=path,
                          query=query, headers=headers, created=created)  # fmt: skip
    headers |= {"signature-input": signed.signature_input, "signature": signed.signature,
                "host": "upstream.example:8443"}  # fmt: skip
    return {"method": "POST", "authority": "upstream.example:8443", "path": path, "query": query,
            "headers": headers, "body": body}  # fmt: skip


def test_a_gateway_signature_verifies_with_the_independent_verifier_and_covers_what_it_must(key):
    call = signed_call(key)
    checked = rfc9421.verify(jwks_of(key), **call)
    assert checked["covered"] == ["@method", "@authority", "@path", "@query", "dataex-grant",
                                  "dataex-buyer-uscc", "dataex-usage-id", "content-digest"]  # fmt: skip
    assert checked["params"] == {"created": NOW, "expires": NOW + httpsig.LIFETIME_SECONDS,
                                 "keyid": KID, "alg": "ed25519", "tag": "dataex-gateway"}  # fmt: skip


def test_without_a_body_or_a_buyer_uscc_neither_is_covered(key):
    call = signed_call(key, body=b"", uscc=None, query="")
    checked = rfc9421.verify(jwks_of(key), **call)
    assert checked["covered"] == ["@method", "@authority", "@path", "@query", "dataex-grant",
                                  "dataex-usage-id"]  # fmt: skip
    assert verify_call(delivery_keys(jwks_of(key)), now=NOW, **call).buyer_uscc is None


def test_the_upstream_helper_accepts_a_gateway_call(key):
    call = verify_call(delivery_keys(jwks_of(key)), now=NOW + 3, **signed_call(key))
    assert call.grant_id == "3f1c6a2e-0000-4000-8000-0000000000aa"
    assert call.buyer_uscc == "91350100M000100Y43"
    assert (call.keyid, call.created) == (KID, NOW)


def _tampered(call, **changes):
    headers = dict(call["headers"])
    headers.update(changes.pop("headers", {}))
    return call | changes | {"headers": headers}


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"path": "/v2/admin"}, "signature_invalid"),
        ({"query": "limit=5000"}, "signature_invalid"),
        ({"method": "DELETE"}, "signature_invalid"),
        ({"authority": "elsewhere.example"}, "signature_invalid"),
        (
            {"headers": {"dataex-grant": "00000000-0000-4000-8000-000000000000"}},
            "signature_invalid",
        ),
        ({"body": b'{"q":2}'}, "digest_mismatch"),
        ({"headers": {"signature": "dataex=:AAAA:"}}, "signature_invalid"),
        ({"headers": {"signature-input": 'dataex=("@method";created=1'}}, "signature_malformed"),
        ({"headers": {"signature": ""}}, "signature_missing"),
    ],
)
def test_the_upstream_helper_refuses_a_changed_call(key, change, reason):
    call = _tampered(signed_call(key), **change)
    with pytest.raises(GatewayCallRefused) as refused:
        verify_call(delivery_keys(jwks_of(key)), now=NOW, **call)
    assert refused.value.reason == reason


def test_stale_future_and_unknown_key_signatures_are_refused(key):
    keys = delivery_keys(jwks_of(key))
    for now in (NOW - 10, NOW + httpsig.LIFETIME_SECONDS + 10):
        with pytest.raises(GatewayCallRefused) as refused:
            verify_call(keys, now=now, **signed_call(key))
        assert refused.value.reason == "signature_stale"
    with pytest.raises(GatewayCallRefused) as refused:
        verify_call(delivery_keys(jwks_of(Ed25519PrivateKey.generate(), "other")), now=NOW,
                    **signed_call(key))  # fmt: skip
    assert refused.value.reason == "signature_unknown_key"


def test_a_signature_that_leaves_out_a_required_component_is_refused(key):
    call = signed_call(key)
    params = httpsig.signature_params(
        ["@method", "@authority", "@path", "dataex-grant", "dataex-usage-id", "content-digest"],
        {
            "created": NOW,
            "expires": NOW + 60,
            "keyid": KID,
            "alg": "ed25519",
            "tag": "dataex-gateway",
        },
    )
    headers = call["headers"] | {"signature-input": f"dataex={params}"}
    with pytest.raises(GatewayCallRefused) as refused:
        verify_call(delivery_keys(jwks_of(key)), now=NOW, **(call | {"headers": headers}))
    assert refused.value.reason == "signature_incomplete"


def test_only_delivery_keys_of_the_jwks_are_trusted(key):
    exchange_key = {"keys": [public_jwk(key.public_key(), KID)]}  # the certificates' key
    assert delivery_keys(exchange_key) == {}


async def test_the_verifier_fetches_the_jwks_on_an_unknown_keyid_and_refuses_replays(key):
    fetched = []

    async def fetch(url):
        fetched.append(url)
        return jwks_of(key)

    verifier = GatewayVerifier("https://dx.example/.well-known/jwks.json", fetch=fetch)
    call = signed_call(key)
    assert (await verifier.verify(now=NOW, **call)).usage_id.endswith("0001")
    assert fetched == ["https://dx.example/.well-known/jwks.json"]
    with pytest.raises(GatewayCallRefused) as refused:
        await verifier.verify(now=NOW, **call)
    assert refused.value.reason == "replayed"


async def test_the_asgi_middleware_lets_gateway_calls_through_and_refuses_others(key):
    async def fetch(url):
        return jwks_of(key)

    seen = []

    async def app(scope, receive, send):
        message = await receive()
        seen.append((scope["state"]["dataex"].usage_id, message["body"]))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    call = signed_call(key, created=int(time.time()))
    guarded = RequireGatewaySignature(app, GatewayVerifier("https://dx.example/jwks", fetch=fetch))

    async def run(headers, body):
        sent, chunks = [], [{"type": "http.request", "body": body[:3], "more_body": True},
                            {"type": "http.request", "body": body[3:], "more_body": False}]  # fmt: skip

        async def receive():
            return chunks.pop(0)

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": call["path"],
                 "raw_path": call["path"].encode(), "query_string": call["query"].encode(),
                 "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}  # fmt: skip
        await guarded(scope, receive, send)
        return sent[0]["status"], sent[1]["body"]

    assert await run(call["headers"], call["body"]) == (200, b"ok")
    assert seen == [(call["headers"]["dataex-usage-id"], call["body"])]
    status, body = await run(call["headers"], b'{"q":9}')
    assert status == 401 and b"digest_mismatch" in body
    status, body = await run({"host": "upstream.example:8443"}, b"{}")
    assert status == 401 and b"signature_missing" in body


@settings(max_examples=60, deadline=None)
@given(
    body=st.binary(max_size=200),
    path=st.from_regex(r"/[A-Za-z0-9._~%!$&'()*+,;=:@/-]{0,40}", fullmatch=True),
    query=st.from_regex(r"[A-Za-z0-9._~%&=+-]{0,40}", fullmatch=True),
)
def test_any_call_signed_by_the_gateway_verifies_and_any_flipped_body_byte_does_not(
    key, body, path, query
):
    call = signed_call(key, body=body, path=path, query=query)
    keys = delivery_keys(jwks_of(key))
    rfc9421.verify(jwks_of(key), **call)
    verify_call(keys, now=NOW, **call)
    if body:
        flipped = bytes([body[0] ^ 1]) + body[1:]
        with pytest.raises(GatewayCallRefused):
            verify_call(keys, now=NOW, **(call | {"body": flipped}))


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        (
            'a=("x" "y");n=1;s="t", b=:AQI=:',
            {"a": ([("x", {}), ("y", {})], {"n": 1, "s": "t"}), "b": (b"\x01\x02", {})},
        ),
        ("flag, t=tok;p=?0", {"flag": (True, {}), "t": ("tok", {"p": False})}),
        ('q="a\\"b"', {"q": ('a"b', {})}),
    ],
)
def test_structured_dictionaries_parse(text, parsed):
    assert httpsig.parse_dictionary(text) == parsed


@pytest.mark.parametrize("text", ['a=("x"', "a=1,", 'a="\x01"', "A=1", "a=:***:"])
def test_malformed_structured_dictionaries_are_refused(text):
    with pytest.raises(httpsig.SignatureError):
        httpsig.parse_dictionary(text)


def test_signing_refuses_values_that_are_not_printable_ascii(key):
    with pytest.raises(httpsig.SignatureError):
        httpsig.sign(key, KID, method="GET", authority="a", path="/", query="",
                     headers={"dataex-grant": "g", "dataex-usage-id": "u\nx"}, created=NOW)  # fmt: skip
