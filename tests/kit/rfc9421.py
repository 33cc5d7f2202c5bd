"""An RFC 9421 verifier written from the RFC's text, independent of `exchange.delivery.httpsig`.

It shares no code with the gateway's signer or the upstream helper: it reads ``Signature-Input``
and ``Signature`` with regular expressions for the one shape RFC 9421 §4.1/§4.2 give
(``label=(<components>);<params>`` and ``label=:<base64>:``), builds the signature base as §2.5
says (one ``"<component>": <value>`` line per covered component, derived components from §2.2,
header values trimmed, then ``"@signature-params": `` and the Signature-Input member's value),
checks Ed25519 (§3.3.6) with a key of the JWKS named by ``keyid``, and ``Content-Digest``
(RFC 9530 §2) against the body.
"""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def verify(
    jwks: dict[str, Any],
    *,
    method: str,
    authority: str,
    path: str,
    query: str,
    headers: dict[str, str],
    body: bytes,
    label: str = "dataex",
) -> dict[str, Any]:
    """The covered components and parameters, or AssertionError saying what does not hold.
    ``headers``: lower-case names; ``query`` without the ``?``."""
    member = re.search(
        rf"(?:^|,\s*){re.escape(label)}=(\([^)]*\)[^,]*)", headers["signature-input"]
    )
    assert member, "no Signature-Input member for the label"
    params_value = member.group(1)
    inner, params_text = re.fullmatch(r"\(([^)]*)\)(.*)", params_value).groups()  # type: ignore[union-attr]
    covered = re.findall(r'"([^"]*)"', inner)
    params: dict[str, Any] = {}
    for pair in filter(None, params_text.split(";")):
        name, _, value = pair.partition("=")
        params[name] = value[1:-1] if value.startswith('"') else int(value)
    derived = {"@method": method.upper(), "@authority": authority.lower(),
               "@path": path or "/", "@query": "?" + query}  # fmt: skip
    lines = []
    for name in covered:
        value = derived[name] if name.startswith("@") else headers[name].strip()
        lines.append(f'"{name}": {value}')
    lines.append(f'"@signature-params": {params_value}')
    base = "\n".join(lines).encode()
    signature = re.search(
        rf"(?:^|,\s*){re.escape(label)}=:([A-Za-z0-9+/=]*):", headers["signature"]
    )
    assert signature, "no Signature member for the label"
    jwk = next(k for k in jwks["keys"] if k["kid"] == params["keyid"])
    Ed25519PublicKey.from_public_bytes(_b64url(jwk["x"])).verify(
        base64.b64decode(signature.group(1)), base
    )  # raises InvalidSignature
    if "content-digest" in headers:
        expected = base64.b64encode(hashlib.sha256(body).digest()).decode()
        assert headers["content-digest"] == f"sha-256=:{expected}:", "Content-Digest differs"
    return {"covered": covered, "params": params}
