"""Idempotency-Key for retried writes (IETF httpapi idempotency-key draft).

Keys are scoped to the calling organisation and kept 24 hours. The first request with a key
claims it; the result is stored in the same transaction as the change it made, so a replay
returns exactly what the first request returned. The same key with another body is a 422;
while the first request is still running, 409. A claim whose request never finished (the
process died) is taken over after `ABANDONED_AFTER`.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from exchange.platform.canonical import canonical_json
from exchange.platform.db import Connection
from exchange.platform.errors import Conflict, DataexError, FieldError, InvalidInput

KEPT_FOR = timedelta(hours=24)
ABANDONED_AFTER = timedelta(seconds=60)
MAX_KEY_LENGTH = 255


class MissingIdempotencyKey(DataexError):
    status = 400
    code = "idempotency_key_missing"
    title = "Idempotency-Key header required"


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


async def claim(
    pool: asyncpg.Pool, org_id: uuid.UUID, key: str, route: str, digest: str, now: datetime
) -> Replay | None:
    """Claim ``key`` for this request, or return the stored result of the first one.

    One statement: insert the claim, or take over a row that has expired (older than
    `KEPT_FOR`) or was abandoned in flight; otherwise return the row that stands.
    """
    row = await pool.fetchrow(
        """
        INSERT INTO idempotency_keys AS k (org_id, key, route, request_hash, created_at)
        VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (org_id, key) DO UPDATE
            SET route = EXCLUDED.route, request_hash = EXCLUDED.request_hash,
                status = NULL, response = NULL, created_at = EXCLUDED.created_at
            WHERE k.created_at < $6 OR (k.status IS NULL AND k.created_at < $7)
        RETURNING true AS claimed
        """,
        org_id, key, route, digest, now, now - KEPT_FOR, now - ABANDONED_AFTER,
    )  # fmt: skip
    if row is not None:
        return None
    row = await pool.fetchrow(
        "SELECT * FROM idempotency_keys WHERE org_id = $1 AND key = $2", org_id, key
    )
    assert row is not None
    if row["request_hash"] != digest or row["route"] != route:
        raise InvalidInput(
            "this Idempotency-Key was used with a different request; use a new key for a new order",
            errors=[
                FieldError(
                    path="Idempotency-Key", message="reused with another body", source="header"
                )
            ],
        )
    if row["status"] is None:
        raise Conflict(
            "the first request with this Idempotency-Key is still being processed; retry shortly",
            extensions={"retry_after_seconds": 1},
        )
    return Replay(status=row["status"], body=bytes(row["response"]))


async def complete(conn: Connection, org_id: uuid.UUID, key: str, status: int, body: bytes) -> None:
    """Store the result; call inside the transaction that made the change."""
    await conn.execute(
        "UPDATE idempotency_keys SET status = $3, response = $4 WHERE org_id = $1 AND key = $2",
        org_id, key, status, body,
    )  # fmt: skip


async def release(pool: asyncpg.Pool, org_id: uuid.UUID, key: str) -> None:
    """Forget an unfinished claim (the request failed before changing anything)."""
    await pool.execute(
        "DELETE FROM idempotency_keys WHERE org_id = $1 AND key = $2 AND status IS NULL",
        org_id, key,
    )  # fmt: skip
