"""The console's server-side sessions (table ``console_sessions``, owned by this room).

A staff member signs in once with their named API token. The browser then holds only a random
session id (an HttpOnly, ``SameSite=Strict`` cookie); the table keeps its SHA-256, the token it
stands for, and the SHA-256 of the session's CSRF token, which every form carries. Each request
resolves the session afresh against the token and its organisation, so revoking the token (or
taking a role from the organisation) takes effect on the next click. A session ends on
sign-out, after ``console_idle_minutes`` without a request, after ``console_lifetime_hours``
in all, or when its token is revoked or expires; ended rows stay for the auditor.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

import asyncpg

from exchange.platform.auth import Principal, principal_of
from exchange.platform.errors import Unauthenticated

# Writing last_seen_at on every click would make each page a write; a minute is fine-grained
# enough for an idle timeout counted in minutes.
TOUCH_EVERY: Final = timedelta(seconds=60)

_RESOLVE_SQL: Final = """
SELECT s.csrf_hash, s.created_at, s.last_seen_at, s.ended_at, s.end_reason,
       t.id AS token_id, t.roles AS token_roles, t.expires_at, t.revoked_at,
       o.id AS org_id, o.name AS org_name, o.roles AS org_roles, o.is_operator
FROM console_sessions s
JOIN api_tokens t ON t.id = s.token_id
JOIN organisations o ON o.id = t.org_id
WHERE s.id_hash = $1
"""


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True, slots=True)
class Session:
    """A live session: who it is, and the CSRF token its forms carry."""

    principal: Principal
    csrf: str
    created_at: datetime

    def csrf_matches(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.csrf.encode())


class Expired(Unauthenticated):
    """The session existed and has ended (idle, lifetime, token): the page says so."""


class SessionStore:
    def __init__(self, pool: asyncpg.Pool, idle: timedelta, lifetime: timedelta) -> None:
        self.pool = pool
        self.idle = idle
        self.lifetime = lifetime

    async def open(self, principal: Principal, at: datetime) -> tuple[str, str]:
        """A new session for the principal's token: (session id, CSRF token), both secret."""
        session_id = secrets.token_urlsafe(32)
        csrf = _csrf_for(session_id)
        await self.pool.execute(
            "INSERT INTO console_sessions (id_hash, token_id, org_id, csrf_hash, created_at,"
            " last_seen_at) VALUES ($1, $2, $3, $4, $5, $5)",
            _hash(session_id), principal.token_id, principal.org_id, _hash(csrf), at,
        )  # fmt: skip
        return session_id, csrf

    async def resolve(self, session_id: str, at: datetime) -> Session:
        """The live session, touched; `Unauthenticated` (or `Expired`) saying why not."""
        if not session_id or len(session_id) > 100:
            raise Unauthenticated("no console session")
        key = _hash(session_id)
        row = await self.pool.fetchrow(_RESOLVE_SQL, key)
        if row is None:
            raise Unauthenticated("no console session")
        if row["ended_at"] is not None:
            raise Expired(f"the session ended ({row['end_reason']})")
        reason = None
        if row["revoked_at"] is not None or row["expires_at"] <= at:
            reason = "token"
        elif row["last_seen_at"] + self.idle <= at:
            reason = "idle"
        elif row["created_at"] + self.lifetime <= at:
            reason = "lifetime"
        if reason is not None:
            await self.end(session_id, at, reason)
            raise Expired(f"the session ended ({reason})")
        csrf = _csrf_for(session_id)
        if not hmac.compare_digest(_hash(csrf), row["csrf_hash"]):  # never: same derivation
            raise Unauthenticated("the session's CSRF token does not match")
        if at - row["last_seen_at"] >= TOUCH_EVERY:
            await self.pool.execute(
                "UPDATE console_sessions SET last_seen_at = $2 WHERE id_hash = $1 AND"
                " ended_at IS NULL",
                key, at,
            )  # fmt: skip
        return Session(principal=principal_of(row), csrf=csrf, created_at=row["created_at"])

    async def end(self, session_id: str, at: datetime, reason: str) -> None:
        await self.pool.execute(
            "UPDATE console_sessions SET ended_at = $2, end_reason = $3"
            " WHERE id_hash = $1 AND ended_at IS NULL",
            _hash(session_id), at, reason,
        )  # fmt: skip


def _csrf_for(session_id: str) -> str:
    """The session's CSRF token: derived from its id (a keyed hash), so it never needs
    storing in the clear; only its hash is kept, to check the derivation."""
    return hmac.new(session_id.encode(), b"dataex console csrf", hashlib.sha256).hexdigest()
