"""Delivery tokens: short-lived compact JWS the buyer presents to the gateway and file routes.

Issued by ``POST /v1/grants/{id}/tokens`` after re-checking the grant, both organisations and
the negative list in force; signed with the exchange's *delivery* key (its own ``kid`` in
``/.well-known/jwks.json``, ``dataex_purpose: delivery``). Claims: ``iss`` (the exchange),
``sub`` (the buyer organisation), ``buyer_uscc``, ``aud`` (this exchange's delivery audience),
``grant``, ``scope`` (the grant's mode), ``jti``, ``iat``, ``exp`` (at most 15 minutes on).

Checking a token needs no database: the delivery keys are cached (fetched again on an unknown
``kid``), revoked ``jti``s arrive by event. As EDC puts it, access duration is the grant's,
not the token's: a valid token on a suspended grant is refused by the grant check that follows.
Each refusal is its own problem type, so a client (and a test) can tell them apart.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, ClassVar, Final

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from exchange.platform.errors import DataexError
from exchange.platform.signing import SigningKey, b64url_decode

TOKEN_TYPE: Final = "dataex-delivery+jwt"  # noqa: S105 (a JWS typ, not a secret)
MAX_TTL_SECONDS: Final = 15 * 60
LEEWAY_SECONDS: Final = 5
SIGNED_CACHE: Final = 10_000  # verified tokens kept per process (emptied when full)


def audience(exchange_code: str) -> str:
    return f"urn:dataex:{exchange_code}:delivery"


def issuer(exchange_code: str) -> str:
    return f"urn:dataex:exchange:{exchange_code}"


# --- refusals: one problem type each ------------------------------------------------------------


class TokenRefused(DataexError):
    status: ClassVar[int] = 401
    code: ClassVar[str] = "token_invalid"
    title: ClassVar[str] = "The delivery token is not valid"


class TokenMissing(TokenRefused):
    code = "token_missing"
    title = "No delivery token"


class TokenTampered(TokenRefused):
    code = "token_invalid"
    title = "The delivery token is malformed or its signature does not verify"


class TokenExpired(TokenRefused):
    code = "token_expired"
    title = "The delivery token has expired"


class TokenWrongKey(TokenRefused):
    code = "token_wrong_key"
    title = "The delivery token is not signed by one of the exchange's delivery keys"


class TokenOtherGrant(TokenRefused):
    status = 403
    code = "token_other_grant"
    title = "The delivery token was issued for another grant"


class TokenRevoked(TokenRefused):
    code = "token_revoked"
    title = "The delivery token has been revoked"


class TokenWrongScope(TokenRefused):
    status = 403
    code = "token_wrong_scope"
    title = "The delivery token does not cover this kind of delivery"


class GrantRefused(DataexError):
    status: ClassVar[int] = 403
    code: ClassVar[str] = "grant_not_active"
    title: ClassVar[str] = "The grant does not allow delivery now"


class GrantPending(GrantRefused):
    code = "grant_pending"
    title = "The grant waits for the payment to be held in escrow"


class GrantSuspended(GrantRefused):
    code = "grant_suspended"
    title = "The grant is suspended"


class GrantExpired(GrantRefused):
    code = "grant_expired"
    title = "The grant's term is over"


class GrantRevoked(GrantRefused):
    code = "grant_revoked"
    title = "The grant has been revoked"


class QuotaExhausted(GrantRefused):
    status = 403
    code = "quota_exhausted"
    title = "The grant's quota is used up"


class QuotaBusy(GrantRefused):
    """The last units are leased to another gateway process: they come back within a second."""

    status = 429
    code = "quota_leased_elsewhere"
    title = "The grant's remaining units are held by another gateway process; retry shortly"


STATE_REFUSALS: Final[dict[str, type[GrantRefused]]] = {
    "pending": GrantPending,
    "suspended": GrantSuspended,
    "exhausted": QuotaExhausted,
    "expired": GrantExpired,
    "revoked": GrantRevoked,
}


class DeliveryClaims(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    iss: str
    sub: str  # the buyer organisation id
    buyer_uscc: str | None
    aud: str
    grant: str
    scope: str  # "file" or "api"
    jti: str
    iat: int
    exp: int


def issue(
    key: SigningKey,
    *,
    exchange_code: str,
    buyer_org_id: uuid.UUID,
    buyer_uscc: str | None,
    grant_id: uuid.UUID,
    scope: str,
    now: float,
    ttl_seconds: int = MAX_TTL_SECONDS,
) -> tuple[str, DeliveryClaims]:
    ttl = max(1, min(ttl_seconds, MAX_TTL_SECONDS))
    claims = DeliveryClaims(
        iss=issuer(exchange_code), sub=str(buyer_org_id), buyer_uscc=buyer_uscc,
        aud=audience(exchange_code), grant=str(grant_id), scope=scope, jti=str(uuid.uuid4()),
        iat=int(now), exp=int(now) + ttl,
    )  # fmt: skip
    return key.sign_compact(msgspec.to_builtins(claims), typ=TOKEN_TYPE), claims


class TokenVerifier:
    """Checks delivery tokens offline against the delivery keys it holds.

    ``keys``: the delivery JWKS (``{"keys": [...]}``); `refresh` replaces it (the caller
    fetches it from the database or the JWKS URL on an unknown kid). ``revoked``: jtis revoked
    and not yet expired, kept fresh by ``dx.grant.changed`` events."""

    def __init__(self, exchange_code: str, keys: dict[str, Any] | None = None) -> None:
        self.exchange_code = exchange_code
        self.audience = audience(exchange_code)
        self.issuer = issuer(exchange_code)
        self._keys: dict[str, Ed25519PublicKey] = {}
        # Tokens whose signature and audience held, with their claims: a buyer presents the same
        # token for up to 15 minutes, and the Ed25519 check is most of what verifying costs.
        self._signed: dict[str, DeliveryClaims] = {}
        self.revoked: set[str] = set()
        if keys is not None:
            self.refresh(keys)

    def refresh(self, keys: dict[str, Any]) -> None:
        fresh = {
            k["kid"]: Ed25519PublicKey.from_public_bytes(b64url_decode(k["x"]))
            for k in keys.get("keys", [])
            if k.get("dataex_purpose") == "delivery" and k.get("crv") == "Ed25519"
        }
        if fresh.keys() != self._keys.keys():
            self._signed.clear()  # a key withdrawn takes its tokens with it
        self._keys = fresh

    def knows(self, kid: str) -> bool:
        return kid in self._keys

    @staticmethod
    def kid_of(token: str) -> str | None:
        try:
            header = msgspec.json.decode(b64url_decode(token.split(".", 1)[0]))
        except (ValueError, msgspec.DecodeError):
            return None
        kid = header.get("kid") if isinstance(header, dict) else None
        return kid if isinstance(kid, str) else None

    def verify(
        self, token: str | None, *, grant_id: str, scope: str, now: float | None = None
    ) -> DeliveryClaims:
        """The token's claims, or the refusal that says what is wrong with it."""
        if not token:
            raise TokenMissing("send the delivery token as 'Authorization: Bearer <token>'")
        claims = self._signed.get(token)
        if claims is None:
            claims = self._signed_claims(token)
            if len(self._signed) >= SIGNED_CACHE:
                self._signed.clear()
            self._signed[token] = claims
        current = time.time() if now is None else now
        if claims.exp + LEEWAY_SECONDS <= current:
            raise TokenExpired(
                f"the token expired at {claims.exp} (now {int(current)}); ask for a new one",
                extensions={"exp": claims.exp},
            )
        if claims.jti in self.revoked:
            raise TokenRevoked(f"token {claims.jti} was revoked", extensions={"jti": claims.jti})
        if claims.grant != grant_id:
            raise TokenOtherGrant(
                f"the token is for grant {claims.grant}, not {grant_id}",
                extensions={"token_grant": claims.grant},
            )
        if claims.scope != scope:
            raise TokenWrongScope(f"the token's scope is {claims.scope!r}, not {scope!r}")
        return claims

    def _signed_claims(self, token: str) -> DeliveryClaims:
        """The claims of a token signed by a delivery key for this exchange's audience."""
        parts = token.split(".")
        if len(parts) != 3:
            raise TokenTampered("a delivery token is a compact JWS: three base64url parts")
        try:
            header = msgspec.json.decode(b64url_decode(parts[0]))
            signature = b64url_decode(parts[2])
        except (ValueError, msgspec.DecodeError) as error:
            raise TokenTampered("the token's header or signature is not base64url JSON") from error
        if not isinstance(header, dict) or header.get("alg") != "EdDSA":
            raise TokenTampered("the token's alg must be EdDSA")
        if header.get("typ") != TOKEN_TYPE:
            raise TokenTampered(f"the token's typ must be {TOKEN_TYPE}")
        public = self._keys.get(str(header.get("kid")))
        if public is None:
            raise TokenWrongKey(
                f"key {header.get('kid')!r} is not a delivery key of this exchange",
                extensions={"kid": header.get("kid")},
            )
        try:
            public.verify(signature, f"{parts[0]}.{parts[1]}".encode())
        except InvalidSignature as error:
            raise TokenTampered("the token's signature does not verify") from error
        try:
            claims = msgspec.json.decode(b64url_decode(parts[1]), type=DeliveryClaims)
        except (ValueError, msgspec.DecodeError, msgspec.ValidationError) as error:
            raise TokenTampered(f"the token's claims are not delivery claims: {error}") from error
        if claims.aud != self.audience or claims.iss != self.issuer:
            raise TokenTampered(f"the token is not for {self.audience}")
        return claims
