"""The one signing module: Ed25519 keys, encrypted at rest, published as a JWKS, signing JWS.

Every signed artefact (listing certificates now; contract signatures, ledger checkpoints and
receipts later) is a compact JWS (RFC 7515) with ``alg`` EdDSA (RFC 8037) over the RFC 8785
canonical JSON of its claims, so any JOSE library verifies it with ``/.well-known/jwks.json``.

Private keys are stored AES-256-GCM encrypted under a master key: ``DATAEX_MASTER_KEY``
(base64url of 32 bytes) or, when unset, a key file created on first use in the state folder
with mode 0600. Rotation adds a key; old public keys stay in the JWKS so old signatures verify.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from exchange.platform.canonical import canonical_json
from exchange.platform.errors import Unavailable
from exchange.platform.statefolder import seal_state, tighten

if TYPE_CHECKING:  # verifying signatures needs no database driver
    from exchange.platform.db import Connection, Executor

MASTER_KEY_FILE = "master.key"


class SigningError(RuntimeError):
    """Keys cannot be used: a missing or wrong master key, a tampered key row."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jws_header(token: str) -> dict[str, Any]:
    """The protected header of a compact JWS, unverified (to read its ``kid``)."""
    header: dict[str, Any] = msgspec.json.decode(b64url_decode(token.split(".", 1)[0]))
    return header


def load_master_key(state_dir: Path, env: str | None = None) -> bytes:
    """The master key from ``DATAEX_MASTER_KEY`` or the state folder's key file (created once)."""
    raw = env if env is not None else os.environ.get("DATAEX_MASTER_KEY")
    if raw:
        try:
            key = b64url_decode(raw.strip())
        except ValueError as error:
            raise SigningError("DATAEX_MASTER_KEY is not base64url") from error
        if len(key) != 32:
            raise SigningError("DATAEX_MASTER_KEY must encode exactly 32 bytes")
        return key
    path = state_dir / MASTER_KEY_FILE
    seal_state(state_dir)
    with contextlib.suppress(FileExistsError):
        # O_EXCL: two processes starting together never write two different keys.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(b64url(secrets.token_bytes(32)) + "\n")
    tighten(path)  # one made before the state folder was private may be 0644
    key = b64url_decode(path.read_text().strip())
    if len(key) != 32:
        raise SigningError(f"{path} does not hold a 32-byte key")
    return key


def _kid(public: Ed25519PublicKey) -> str:
    """RFC 7638 JWK thumbprint of the public key."""
    x = b64url(public.public_bytes(Encoding.Raw, PublicFormat.Raw))
    thumbprint = '{"crv":"Ed25519","kty":"OKP","x":"' + x + '"}'
    return b64url(hashlib.sha256(thumbprint.encode()).digest())


KeyPurpose = Literal["exchange", "delivery"]


def public_jwk(
    public: Ed25519PublicKey, kid: str, purpose: KeyPurpose = "exchange"
) -> dict[str, str]:
    """The JWK. A delivery key (delivery tokens, the gateway's RFC 9421 signatures) says so in
    ``dataex_purpose``: ``use`` stays ``sig``, the only value JOSE libraries accept for a
    signing key (joserfc refuses any other), so peers' verifiers keep working."""
    jwk = {
        "kty": "OKP",
        "crv": "Ed25519",
        "x": b64url(public.public_bytes(Encoding.Raw, PublicFormat.Raw)),
        "kid": kid,
        "use": "sig",
        "alg": "EdDSA",
    }
    if purpose != "exchange":
        jwk["dataex_purpose"] = purpose
    return jwk


@dataclass(frozen=True, slots=True)
class SigningKey:
    kid: str
    private: Ed25519PrivateKey

    def sign_compact(self, claims: Any, *, typ: str) -> str:
        """Compact JWS over the canonical JSON of ``claims``."""
        header = {"alg": "EdDSA", "kid": self.kid, "typ": typ}
        signing_input = f"{b64url(canonical_json(header))}.{b64url(canonical_json(claims))}"
        signature = self.private.sign(signing_input.encode())
        return f"{signing_input}.{b64url(signature)}"

    def sign_detached(self, payload: bytes, *, typ: str) -> str:
        """Detached compact JWS (RFC 7515 Appendix F): ``header..signature``."""
        header = b64url(canonical_json({"alg": "EdDSA", "kid": self.kid, "typ": typ}))
        signature = self.private.sign(f"{header}.{b64url(payload)}".encode())
        return f"{header}..{b64url(signature)}"


class KeyRing:
    """The exchange's keys in PostgreSQL (``signing_keys``), decrypted with the master key."""

    def __init__(self, master_key: bytes) -> None:
        self._aead = AESGCM(master_key)
        # Keys never change once stored (the table refuses UPDATE), so a decrypted key is kept
        # in memory by kid; which key is current is still read from the database each time.
        self._opened: dict[str, SigningKey] = {}

    def seal(self, kid: str, private: Ed25519PrivateKey) -> bytes:
        """Encrypt a private key under the master key (the kid is bound in as AAD)."""
        return self._seal(kid, private)

    def open(self, kid: str, sealed: bytes) -> SigningKey:
        key = self._opened.get(kid)
        if key is None:
            key = self._opened[kid] = SigningKey(kid, self._open(kid, sealed))
        return key

    def _seal(self, kid: str, private: Ed25519PrivateKey) -> bytes:
        from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat

        raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        nonce = secrets.token_bytes(12)
        return nonce + self._aead.encrypt(nonce, raw, kid.encode())

    def _open(self, kid: str, sealed: bytes) -> Ed25519PrivateKey:
        try:
            raw = self._aead.decrypt(sealed[:12], sealed[12:], kid.encode())
        except InvalidTag as error:
            raise SigningError(
                f"signing key {kid} cannot be decrypted: wrong master key (DATAEX_MASTER_KEY or"
                " the state folder's master.key) or a tampered key row"
            ) from error
        return Ed25519PrivateKey.from_private_bytes(raw)

    async def rotate(
        self, conn: Connection, now: datetime, purpose: KeyPurpose = "exchange"
    ) -> str:
        """Add a new current key of ``purpose``; earlier keys stay published for verification."""
        private = Ed25519PrivateKey.generate()
        kid = _kid(private.public_key())
        await conn.execute(
            "INSERT INTO signing_keys (kid, public_jwk, sealed_private, created_at, purpose)"
            " VALUES ($1, $2, $3, $4, $5)",
            kid,
            public_jwk(private.public_key(), kid, purpose),
            self._seal(kid, private),
            now,
            purpose,
        )
        return kid

    async def ensure_key(self, conn: Connection, now: datetime) -> str | None:
        """Create the first key of each purpose that has none; returns the exchange key's kid
        if it was created."""
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('dataex.signing_keys'))")
        have = {row["purpose"] for row in await conn.fetch(
            "SELECT DISTINCT purpose FROM signing_keys"
        )}  # fmt: skip
        if "delivery" not in have:
            await self.rotate(conn, now, "delivery")
        if "exchange" in have:
            return None
        return await self.rotate(conn, now)

    async def current(self, conn: Executor, purpose: KeyPurpose = "exchange") -> SigningKey:
        row = await conn.fetchrow(
            "SELECT kid, sealed_private FROM signing_keys WHERE purpose = $1"
            " ORDER BY created_at DESC, kid LIMIT 1",
            purpose,
        )
        if row is None:
            raise Unavailable(f"the exchange has no {purpose} key yet (dataex keys rotate)")
        return self.open(row["kid"], bytes(row["sealed_private"]))


async def jwks(
    conn: Executor, purpose: KeyPurpose | None = None
) -> dict[str, list[dict[str, str]]]:
    """Current and previous public keys, newest first (of one purpose, or all)."""
    rows = await conn.fetch(
        "SELECT public_jwk FROM signing_keys WHERE $1::text IS NULL OR purpose = $1"
        " ORDER BY created_at DESC, kid",
        purpose,
    )
    return {"keys": [row["public_jwk"] for row in rows]}


class Jws(msgspec.Struct, frozen=True):
    header: dict[str, Any]
    claims: dict[str, Any]


def verify_compact(token: str, keys: dict[str, list[dict[str, str]]]) -> Jws:
    """Verify a compact EdDSA JWS against a JWKS; raises `SigningError` saying why not."""
    try:
        header_b64, claims_b64, signature_b64 = token.split(".")
        header = msgspec.json.decode(b64url_decode(header_b64))
        claims = msgspec.json.decode(b64url_decode(claims_b64))
    except (ValueError, msgspec.DecodeError) as error:
        raise SigningError("not a compact JWS") from error
    if header.get("alg") != "EdDSA":
        raise SigningError(f"unsupported alg {header.get('alg')!r}")
    jwk = next((k for k in keys.get("keys", []) if k.get("kid") == header.get("kid")), None)
    if jwk is None:
        raise SigningError(f"unknown key {header.get('kid')!r}")
    public = Ed25519PublicKey.from_public_bytes(b64url_decode(jwk["x"]))
    try:
        public.verify(b64url_decode(signature_b64), f"{header_b64}.{claims_b64}".encode())
    except InvalidSignature as error:
        raise SigningError("signature does not verify") from error
    return Jws(header=header, claims=claims)
