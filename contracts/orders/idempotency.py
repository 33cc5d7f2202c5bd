"""Idempotency-Key for retried writes (IETF httpapi idempotency-key draft).

Keys are scoped to the calling organisation and kept 24 hours. The whole request runs in one
transaction that first takes a transaction-scoped advisory lock on (organisation, key) and
reads any stored result: a lock held by another transaction means the first request with the
key is still running (409); a stored result is replayed for the same body and refused for
another (422). The result is stored by the statement that writes the change, so it commits
with it; a request that fails or dies leaves nothing behind and its lock goes with its
transaction (no claim to abandon or release). Two requests racing past the lock (one commits
between the other's snapshot and its lock) meet at the key's primary key: the second rolls
back entirely and replays the first's result.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from exchange.platform.canonical import canonical_json
from exchange.platform.errors import Conflict, DataexError, FieldError, InvalidInput

KEPT_FOR = timedelta(hours=24)
MAX_KEY_LENGTH = 255


class MissingIdempotencyKey(DataexError):
    status = 400
    code = "idempotency_key_missing"
    title = "Idempotency-Key header required"


@dataclass(frozen=True, slots=True)
class Keyed:
    """A request's Idempotency-Key, the digest of its body and its route."""

    key: str
    digest: str
    route: str


@dataclass(frozen=True, slots=True)
class Replay:
    status: int
    body: bytes


def request_hash(body: Any) -> str:
    return hashlib.sha256(canonical_json(body)).hexdigest()


def check_key(key: str | None) -> str:
    if key is None or not key.strip():
        raise MissingIdempotencyKey(
            "send an Idempotency-Key header (a unique value per intended order, e.g. a UUID);"
            " retries with the same key and body return the first result"
        )
    if len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidInput(
            f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} printable characters",
            errors=[FieldError(path="Idempotency-Key", message="invalid", source="header")],
        )
    return key.strip()


def lock_key_sql(org: str, key: str) -> str:
    """SQL for the advisory lock of a key, from the parameters holding the organisation id and
    the key (a 64-bit hash; a collision only answers an unrelated request 409, retry)."""
    return f"hashtextextended({org}::text || '/' || {key}, 0)"


def stored(row: Any, digest: str, route: str, now: datetime) -> Replay | None:
    """The stored result for a key (``row``: request_hash, route, status, response, created_at
    of its idempotency_keys row, or NULLs), or None when the key is free. Raises 422 for
    another body."""
    if row["idem_status"] is None or row["idem_created_at"] < now - KEPT_FOR:
        return None
    if row["idem_request_hash"] != digest or row["idem_route"] != route:
        raise InvalidInput(
            "this Idempotency-Key was used with a different request; use a new key for a new order",
            errors=[
                FieldError(
                    path="Idempotency-Key", message="reused with another body", source="header"
                )
            ],
        )
    return Replay(status=row["idem_status"], body=bytes(row["idem_response"]))


def in_flight() -> Conflict:
    return Conflict(
        "the first request with this Idempotency-Key is still being processed; retry shortly",
        extensions={"retry_after_seconds": 1},
    )
