"""A finished job's receipt: the evidence of what ran, over what, under which limits, and what
left — signed by the exchange and verifiable offline with its JWKS.

The receipt is a JSON object (`build`); its digest is ``sha256:<hex>`` over its RFC 8785
canonical JSON; ``jws`` is a compact EdDSA JWS whose payload is the receipt. A reader holds the
document ``{"receipt", "digest", "jws", "ledger_seq"}`` as served by ``GET /v1/jobs/{id}/receipt``
(canonical JSON) and checks it with `verify` and the exchange's ``/.well-known/jwks.json``: any
changed byte fails (the document must be exactly its canonical form, the receipt must hash to
the digest, and the signature must be over that very receipt).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import msgspec

from exchange.platform.canonical import canonical_json, sha256_digest
from exchange.platform.signing import (
    SigningError,
    SigningKey,
    b64url,
    b64url_decode,
    verify_compact,
)

RECEIPT_TYPE: Final = "dataex.job-receipt.v1"
JWS_TYPE: Final = "dataex-job-receipt+jws"


class ReceiptInvalid(ValueError):
    """The receipt does not verify; the message says what is wrong."""


def _time(value: Any) -> str | None:
    return None if value is None else value.isoformat()


def build(
    row: Mapping[str, Any], *, exchange: str, trade_id: str | None,
    inputs: Mapping[str, str], charged_cpu_ms: int,
) -> dict[str, Any]:  # fmt: skip
    """The receipt of a final job row: its inputs as name → SHA-256 of the bytes it read."""
    limits = row["limits"]
    return {
        "type": RECEIPT_TYPE, "exchange": exchange, "job_id": str(row["id"]),
        "grant_id": str(row["grant_id"]), "trade_id": trade_id,
        "buyer_org_id": str(row["buyer_org_id"]), "seller_org_id": str(row["seller_org_id"]),
        "product_code": row["product_code"], "revision": row["revision"],
        "revision_digest": row["revision_digest"], "inputs": dict(sorted(inputs.items())),
        "kind": row["kind"], "algorithm_sha256": row["algorithm_sha256"],
        "query": None if row["query"] is None else _decoded(row["query"]),
        "params_digest": sha256_digest(_decoded(row["params"])),
        "limits": _decoded(limits), "k": row["k"], "epsilon_micro": row["epsilon_micro"],
        "state": row["state"], "limit_kind": row["limit_kind"],
        "rejection_reason": row["rejection_reason"], "exit_code": row["exit_code"],
        "attempts": row["attempts"], "cpu_ms": row["cpu_ms"], "charged_cpu_ms": charged_cpu_ms,
        "output_sha256": row["result_sha256"], "queued_at": _time(row["queued_at"]),
        "started_at": _time(row["started_at"]), "finished_at": _time(row["finished_at"]),
    }  # fmt: skip


def _decoded(raw: Any) -> Any:
    return msgspec.json.decode(raw) if isinstance(raw, (str, bytes)) else raw


def _strict_b64(part: str) -> bool:
    """Only the one encoding of its bytes (no stray padding bits a changed byte could hide in)."""
    try:
        return b64url(b64url_decode(part)) == part
    except ValueError:
        return False


def sign(receipt: dict[str, Any], key: SigningKey) -> tuple[str, str]:
    """The receipt's digest and its compact JWS."""
    return sha256_digest(receipt), key.sign_compact(receipt, typ=JWS_TYPE)


def document(receipt: dict[str, Any], digest: str, jws: str, ledger_seq: int | None) -> bytes:
    """The receipt as served: canonical JSON of receipt, digest, signature and ledger entry."""
    return canonical_json({"receipt": receipt, "digest": digest, "jws": jws,
                           "ledger_seq": ledger_seq})  # fmt: skip


def verify(data: bytes, jwks: dict[str, Any]) -> dict[str, Any]:
    """Check a served receipt document offline; returns the receipt or raises `ReceiptInvalid`."""
    try:
        parsed = msgspec.json.decode(data)
    except msgspec.DecodeError as error:
        raise ReceiptInvalid("the receipt is not JSON") from error
    if not isinstance(parsed, dict) or set(parsed) != {"receipt", "digest", "jws", "ledger_seq"}:
        raise ReceiptInvalid("the document is not a job receipt")
    if canonical_json(parsed) != data:
        raise ReceiptInvalid("the document is not in its canonical form (it was changed)")
    receipt = parsed["receipt"]
    if not isinstance(receipt, dict) or receipt.get("type") != RECEIPT_TYPE:
        raise ReceiptInvalid("not a job receipt")
    if sha256_digest(receipt) != parsed["digest"]:
        raise ReceiptInvalid("the receipt does not hash to its digest")
    token = str(parsed["jws"])
    if not all(_strict_b64(part) for part in token.split(".")):
        raise ReceiptInvalid("the signature is not in strict base64url")
    try:
        verified = verify_compact(token, jwks)
    except SigningError as error:
        raise ReceiptInvalid(f"the signature: {error}") from error
    if verified.header.get("typ") != JWS_TYPE or verified.claims != receipt:
        raise ReceiptInvalid("the signature is not over this receipt")
    return receipt
