"""Recognition across exchanges: peers, member credentials, recognised products, the feed.

A product recognised from a peer becomes a local product row (``recognised_from`` = the origin's
code) with the origin's revision numbers, metadata and certificate, listed without a local
review case; catalog, orders and contracts then treat it as any other. A recognition is keyed by
(origin, product code) and moves only forward: by the origin's revision, and, for events pulled
from the origin's feed, by feed sequence. Every refusal is recorded in the audit trail, in its
own transaction, before the error reaches the caller.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from contracts.policy.evaluator import evaluate
from contracts.policy.service import PolicyService
from exchange.identity import repository as identity_repo
from exchange.identity.schemas import Contact
from exchange.listings.lifecycle import evaluation_document
from exchange.listings.schemas import ProductMetadata
from exchange.listings.service import CERTIFICATE_TYPE, ListingService
from exchange.platform.audit import Actor, record
from exchange.platform.clock import Clock
from exchange.platform.db import Connection, Executor
from exchange.platform.errors import Conflict, NotFound
from exchange.platform.logging import get_logger
from exchange.platform.settings import Settings
from exchange.platform.signing import KeyRing, jwks
from exchange.recognition import feed, verify
from exchange.recognition.schemas import (
    CREDENTIAL_TYPE,
    FEED_TYPE,
    IDENTITY_TYPE,
    ExchangeIdentity,
    FeedClaims,
    FeedItem,
    FeedPage,
    Jwks,
    MemberCredential,
    Peer,
    PeerCreate,
    Recognition,
    RecognitionRequest,
)

log = get_logger(__name__)
# ``fetch(url)``: the decoded JSON body of an HTTP GET (the caller chooses the client).
Fetch = Callable[[str], Awaitable[Any]]
PULL_PAGE = 100  # feed items asked for per page
IDENTITY_PATH = "/.well-known/dataex-exchange"
MARKET_ROLES = ("seller", "buyer")
REFUSED_HERE = "a newer revision is refused by this exchange's negative list"


def _peer(row: Any) -> Peer:
    return Peer(
        code=row["code"], name=row["name"], base_url=row["base_url"], feed_url=row["feed_url"],
        kids=[k["kid"] for k in row["jwks"].get("keys", [])], cursor=row["cursor"],
        trusted=row["removed_at"] is None, added_at=row["added_at"],
        removed_at=row["removed_at"], last_pull_at=row["last_pull_at"],
        last_error=row["last_error"],
    )  # fmt: skip


def _recognition(row: Any) -> Recognition:
    return Recognition(
        origin=row["origin"], product_code=row["product_code"], product_id=row["product_id"],
        revision=row["revision"], revision_digest=row["revision_digest"],
        origin_state=row["origin_state"], outcome=row["outcome"], refusal=row["refusal"],
        updated_at=row["updated_at"],
    )  # fmt: skip


def _distrusted(code: str) -> str:
    return f"peer exchange {code} is no longer trusted"


def _error_text(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"[:500]


async def _read_page(peer: Any, fetch: Fetch) -> FeedClaims:
    """The page of ``peer``'s feed after this exchange's cursor, verified with its pinned keys."""
    body = await fetch(f"{peer['feed_url']}?after={peer['cursor']}&limit={PULL_PAGE}")
    verified = verify.verify_signed(str(body["jws"]), peer["code"], peer["jwks"], typ=FEED_TYPE)
    return feed.feed_claims(verified.claims)


def check_jwks(keys: Jwks) -> None:
    """A JWKS to pin: at least one Ed25519 public key, each with a kid, no private parts."""
    entries = keys.get("keys")
    if not entries:
        raise verify.CredentialInvalid("the JWKS holds no keys")
    for key in entries:
        if key.get("kty") != "OKP" or key.get("crv") != "Ed25519" or not key.get("kid"):
            raise verify.CredentialInvalid("only Ed25519 keys with a kid can be pinned")
        if "d" in key:
            raise verify.CredentialInvalid("the JWKS holds a private key: pin public keys only")


class RecognitionService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        clock: Clock,
        settings: Settings,
        keyring: KeyRing,
        listings: ListingService,
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.settings = settings
        self.keyring = keyring
        self.listings = listings  # recognised products are written through the listing room
        self.policy = PolicyService(pool, clock)

    # --- this exchange's identity and feed ---------------------------------------------------

    async def identity(self) -> ExchangeIdentity:
        base = self.settings.public_url
        policy = await self.pool.fetchrow(
            "SELECT version, digest FROM policy_lists WHERE effective_from <= $1"
            " ORDER BY effective_from DESC LIMIT 1",
            self.clock.now(),
        )
        facts: dict[str, Any] = {
            "code": self.settings.exchange_code,
            "name": self.settings.exchange_name,
            "jwks": await jwks(self.pool),
            "feed_url": base + feed.FEED_PATH,
            "certificate_status_url": base + "/v1/certificates/{product_code}/status",
            "events": [self.settings.subject("listing", e) for e in feed.EVENTS],
            "policy_list_version": policy["version"] if policy else None,
            "policy_list_digest": policy["digest"] if policy else None,
        }
        key = await self.keyring.current(self.pool)
        claims = facts | {"iss": self.settings.exchange_code,
                          "iat": int(self.clock.now().timestamp())}  # fmt: skip
        return ExchangeIdentity(**facts, jws=key.sign_compact(claims, typ=IDENTITY_TYPE))

    async def feed_page(self, after: int, limit: int) -> FeedPage:
        items = await feed.items_after(self.pool, after, min(limit, feed.MAX_PAGE))
        key = await self.keyring.current(self.pool)
        return feed.sign_page(self.settings, key, after, items, self.clock.now())

    # --- peers -------------------------------------------------------------------------------

    async def add_peer(
        self, actor: Actor, data: PeerCreate, identity_jws: str, fetch: Fetch
    ) -> Peer:
        """Trust a peer: its identity document must verify with the JWKS pinned here and name
        the code given; the feed URL is taken from that signed document.

        A peer trusted again after it was distrusted is not believed from this exchange's own
        record of it: its products stay hidden here, and refuse orders, while its feed is read
        from the cursor to its end (``fetch``, an HTTP GET as for `pull`), applying what it
        did meanwhile; only then is it trusted, and of its products only those it still lists
        come back. A feed that cannot be read to its end leaves it distrusted (503)."""
        check_jwks(data.jwks)
        if data.code == self.settings.exchange_code:
            raise Conflict(f"{data.code} is this exchange's own code")
        verified = verify.verify_signed(identity_jws, data.code, data.jwks, typ=IDENTITY_TYPE)
        claims = verified.claims
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            before = await conn.fetchrow(
                "SELECT removed_at FROM peers WHERE code = $1 FOR UPDATE", data.code
            )
            # A distrusted peer's keys and feed URL are replaced now, its trust only once its
            # feed is read to the end (`_trust_when_caught_up`).
            row = await conn.fetchrow(
                """
                INSERT INTO peers (code, name, base_url, jwks, feed_url, identity, added_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7)
                ON CONFLICT (code) DO UPDATE SET name = excluded.name,
                    base_url = excluded.base_url, jwks = excluded.jwks,
                    feed_url = excluded.feed_url, identity = excluded.identity,
                    last_error = NULL
                RETURNING *
                """,
                data.code, str(claims["name"]), data.base_url.rstrip("/"), data.jwks,
                str(claims["feed_url"]), identity_jws, now,
            )  # fmt: skip
            detail = {"kids": [k["kid"] for k in data.jwks["keys"]],
                      "feed_url": claims["feed_url"], "name": claims["name"]}  # fmt: skip
            if before is None or before["removed_at"] is None:
                await record(
                    conn, actor, at=now, action="peer.trusted", subject_type="peer",
                    subject_id=data.code, detail=detail,
                )  # fmt: skip
                return _peer(row)
        try:
            return await self._trust_when_caught_up(data.code, fetch, actor, detail)
        except Exception as error:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "UPDATE peers SET last_error = $2 WHERE code = $1",
                    data.code, _error_text(error),
                )  # fmt: skip
                await record(
                    conn, actor, at=self.clock.now(), action="peer.trust_deferred",
                    subject_type="peer", subject_id=data.code,
                    detail=detail | {"error": _error_text(error)},
                )  # fmt: skip
            if isinstance(error, asyncpg.PostgresError):
                raise
            raise verify.FeedUnavailable(
                f"{data.code}'s feed could not be read to its end ({error}): it stays"
                " distrusted and its products hidden here; trust it again when it answers",
                extensions={"peer": data.code},
            ) from error

    async def _trust_when_caught_up(
        self, code: str, fetch: Fetch, actor: Actor, detail: dict[str, Any]
    ) -> Peer:
        """Read a distrusted peer's feed to its end, its products held meanwhile; then, in
        one transaction with the peer's row locked (so nothing is applied in between), check
        that the feed has nothing more, trust the peer, and list again the products that only
        withdrawn trust held and that its feed left listed."""
        while True:
            while await self._pull(code, fetch, actor, catching_up=True) > 0:
                pass
            async with self.pool.acquire() as conn, conn.transaction():
                peer = await conn.fetchrow("SELECT * FROM peers WHERE code = $1 FOR UPDATE", code)
                assert peer is not None  # peers are never deleted
                if peer["removed_at"] is None:  # trusted again meanwhile, by another request
                    return _peer(peer)
                page = await _read_page(peer, fetch)  # a failure rolls back, then is kept
                if any(item.seq > peer["cursor"] for item in page.items):
                    continue  # the peer has moved on since: read that too, then check again
                now = self.clock.now()
                row = await conn.fetchrow(
                    "UPDATE peers SET removed_at = NULL, last_error = NULL, last_pull_at = $2"
                    " WHERE code = $1 RETURNING *",
                    code, now,
                )  # fmt: skip
                assert row is not None
                still_listed = await conn.fetch(
                    "SELECT product_id FROM recognitions WHERE origin = $1"
                    " AND product_id IS NOT NULL AND origin_state = 'listed'"
                    " AND outcome = 'recognised'",
                    code,
                )
                restored = await self.listings.retrust_origin(
                    conn, code, [r["product_id"] for r in still_listed], now
                )
                await record(
                    conn, actor, at=now, action="peer.trusted", subject_type="peer",
                    subject_id=code,
                    detail=detail | {"caught_up_to": row["cursor"], "products_restored": restored},
                )  # fmt: skip
                return _peer(row)

    async def peers(self) -> list[Peer]:
        rows = await self.pool.fetch("SELECT * FROM peers ORDER BY code")
        return [_peer(row) for row in rows]

    async def remove_peer(self, actor: Actor, code: str) -> Peer:
        """Distrust a peer: its recognised products leave the catalog and refuse orders now."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                "UPDATE peers SET removed_at = coalesce(removed_at, $2) WHERE code = $1"
                " RETURNING *",
                code, now,
            )  # fmt: skip
            if row is None:
                raise NotFound(f"no peer {code}")
            hidden = await self.listings.distrust_origin(conn, code, _distrusted(code), now)
            await record(
                conn, actor, at=now, action="peer.distrusted", subject_type="peer",
                subject_id=code, detail={"products_hidden": hidden},
            )  # fmt: skip
        return _peer(row)

    async def trusted_keys(self, conn: Executor, catching_up: str | None = None) -> dict[str, Jwks]:
        """The pinned keys of the trusted peers (and of ``catching_up``, a distrusted peer
        whose feed is being read before it is trusted again)."""
        rows = await conn.fetch(
            "SELECT code, jwks FROM peers WHERE removed_at IS NULL OR code = $1", catching_up
        )
        return {row["code"]: row["jwks"] for row in rows}

    # --- member credentials --------------------------------------------------------------------

    async def issue_credential(
        self, actor: Actor, org_id: uuid.UUID, valid_days: int
    ) -> MemberCredential:
        """A member credential for a market organisation: its identity, roles and the public
        keys it registered, signed by this exchange, so peers register it without paperwork."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            org = await conn.fetchrow("SELECT * FROM organisations WHERE id = $1", org_id)
            if org is None or org["is_operator"]:
                raise NotFound(f"no market organisation {org_id}")
            keys = await conn.fetch(
                "SELECT jwk FROM org_keys WHERE org_id = $1 AND revoked_at IS NULL"
                " ORDER BY created_at, kid",
                org_id,
            )
            expires = now + timedelta(days=valid_days)
            credential_id = uuid.uuid4()
            claims = {
                "iss": self.settings.exchange_code,
                "iss_name": self.settings.exchange_name,
                "jti": str(credential_id),
                "sub": str(org_id),
                "name": org["name"],
                "uscc": org["uscc"],
                "roles": [r for r in org["roles"] if r in MARKET_ROLES],
                "region": org["region"],
                "contact": org["contact"],
                "keys": {"keys": [row["jwk"] for row in keys]},
                "iat": int(now.timestamp()),
                "exp": int(expires.timestamp()),
            }
            key = await self.keyring.current(conn)
            token = key.sign_compact(claims, typ=CREDENTIAL_TYPE)
            await conn.execute(
                "INSERT INTO member_credentials (id, org_id, jws, issued_at, expires_at)"
                " VALUES ($1, $2, $3, $4, $5)",
                credential_id, org_id, token, now, expires,
            )  # fmt: skip
            await record(
                conn, actor, at=now, action="credential.issued", subject_type="organisation",
                subject_id=org_id,
                detail={"jti": str(credential_id), "kids": [k["jwk"]["kid"] for k in keys],
                        "expires_at": expires.isoformat()},
            )  # fmt: skip
        return MemberCredential(
            id=credential_id, org_id=org_id, jws=token, claims=claims, expires_at=expires
        )

    def _verify_credential(self, token: str, peers: dict[str, Jwks]) -> tuple[str, dict[str, Any]]:
        issuer, keys = verify.issuer_keys(token, peers)
        claims = verify.verify_signed(token, issuer, keys, typ=CREDENTIAL_TYPE).claims
        try:
            verify.check_expiry(claims, self.clock.now(), "member credential")
        except verify.CertificateExpired as error:
            raise verify.CredentialInvalid(error.detail) from error
        for field in ("jti", "name", "uscc", "roles", "region", "contact", "keys"):
            if field not in claims:
                raise verify.CredentialInvalid(f"the credential has no {field}")
        return issuer, claims

    async def accept_credential(self, actor: Actor, token: str) -> uuid.UUID:
        """Register (or recognise) an organisation from a peer's member credential."""
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                issuer, claims = self._verify_credential(token, await self.trusted_keys(conn))
                return await self._accept_credential(conn, actor, issuer, claims, token)
        except verify.RecognitionError as error:
            await self._record_refusal(actor, "credential", "-", error)
            raise

    async def _accept_credential(
        self, conn: Connection, actor: Actor, issuer: str, claims: dict[str, Any], token: str
    ) -> uuid.UUID:
        now = self.clock.now()
        org_id: uuid.UUID | None = await conn.fetchval(
            "SELECT id FROM organisations WHERE uscc = $1", claims["uscc"]
        )
        created = org_id is None
        if org_id is None:
            roles = [r for r in claims["roles"] if r in MARKET_ROLES] or ["seller"]
            org_id = await identity_repo.register_from_credential(
                conn, name=claims["name"], uscc=claims["uscc"], roles=roles,
                region=claims["region"], contact=msgspec.convert(claims["contact"], Contact),
                now=now,
            )  # fmt: skip
        assert org_id is not None
        from contracts.agreements.signatures import PublicKeyIn, register_key

        kids = [
            (await register_key(conn, org_id, PublicKeyIn(kty=k["kty"], crv=k["crv"], x=k["x"]),
                                now)).kid
            for k in claims["keys"].get("keys", [])
        ]  # fmt: skip
        inserted = await conn.fetchval(
            "INSERT INTO accepted_credentials (org_id, issuer, jti, jws, expires_at, accepted_at)"
            " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (issuer, jti) DO NOTHING"
            " RETURNING org_id",
            org_id, issuer, claims["jti"], token,
            datetime.fromtimestamp(claims["exp"], tz=UTC), now,
        )  # fmt: skip
        if inserted is not None:
            await record(
                conn, actor, at=now,
                action="organisation.registered_from_credential" if created
                else "credential.accepted",
                subject_type="organisation", subject_id=org_id,
                detail={"issuer": issuer, "jti": claims["jti"], "uscc": claims["uscc"],
                        "kids": kids},
            )  # fmt: skip
        return org_id

    # --- recognitions ------------------------------------------------------------------------

    async def recognition(self, origin: str, code: str) -> Recognition:
        row = await self.pool.fetchrow(
            "SELECT * FROM recognitions WHERE origin = $1 AND product_code = $2", origin, code
        )
        if row is None:
            raise NotFound(f"no recognition of {code} from {origin}")
        return _recognition(row)

    async def recognitions(self, origin: str | None) -> list[Recognition]:
        rows = await self.pool.fetch(
            "SELECT * FROM recognitions WHERE $1::text IS NULL OR origin = $1"
            " ORDER BY updated_at DESC, product_code LIMIT 500",
            origin,
        )
        return [_recognition(row) for row in rows]

    async def recognitions_page(
        self,
        *,
        origin: str | None,
        outcome: str | None,
        after: tuple[datetime, str, str] | None,
        limit: int,
    ) -> list[Recognition]:
        """Recognitions newest first, keyset-paged by (``updated_at``, origin, product code):
        ``after`` is the last row of the previous page. For the staff console."""
        rows = await self.pool.fetch(
            "SELECT * FROM recognitions WHERE ($1::text IS NULL OR origin = $1)"
            " AND ($2::text IS NULL OR outcome = $2)"
            " AND ($3::timestamptz IS NULL"
            "      OR (updated_at, origin, product_code) < ($3, $4::text, $5::text))"
            " ORDER BY updated_at DESC, origin DESC, product_code DESC LIMIT $6",
            origin, outcome, *(after or (None, None, None)), limit,
        )  # fmt: skip
        return [_recognition(row) for row in rows]

    async def outcome_counts(self) -> dict[str, dict[str, int]]:
        """Per peer, how many of its products are recognised here and how many refused."""
        rows = await self.pool.fetch(
            "SELECT origin, outcome, count(*) AS n FROM recognitions GROUP BY origin, outcome"
        )
        counts: dict[str, dict[str, int]] = {}
        for row in rows:
            counts.setdefault(row["origin"], {})[row["outcome"]] = row["n"]
        return counts

    async def recognise(self, actor: Actor, request: RecognitionRequest) -> Recognition:
        """``POST /v1/recognitions``: verify the certificate with the pinned key of its issuer,
        the digest against the metadata, expiry and revocation, the revision against the one
        recognised; then the local negative list; then list it here."""
        code = "-"
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                peers = await self.trusted_keys(conn)
                origin, keys = verify.issuer_keys(request.certificate, peers)
                claims = verify.verify_signed(
                    request.certificate, origin, keys, typ=CERTIFICATE_TYPE
                ).claims
                code = str(claims.get("sub"))
                verify.check_expiry(claims, self.clock.now(), "certificate")
                metadata = verify.check_metadata(claims, request.metadata)
                credential: dict[str, Any] | None = None
                if request.credential is not None:
                    issuer, credential = self._verify_credential(request.credential, peers)
                    if issuer != origin:
                        raise verify.CredentialInvalid(
                            f"the credential was issued by {issuer}, the certificate by {origin}"
                        )
                    verify.check_credential_holder(credential, claims)
                current = await self._lock(conn, origin, code)
                if current is not None:
                    await self._check_not_revoked(conn, current, claims, request.certificate)
                    if int(claims["revision"]) < current["revision"]:
                        raise verify.RevisionReplayed(
                            f"revision {claims['revision']} of {code} is older than revision"
                            f" {current['revision']} already recognised",
                            extensions={"recognised_revision": current["revision"]},
                        )
                result = await self._publish(
                    conn, actor, origin, claims, metadata, credential, request.credential,
                    request.certificate, current, seq=None,
                )  # fmt: skip
        except verify.RecognitionError as error:
            await self._record_refusal(actor, "certificate", code, error)
            raise
        if result.outcome == "refused":
            assert result.refusal is not None
            raise verify.RefusedByLocalPolicy(
                f"{self.settings.exchange_code} refuses {code} under its negative list:"
                f" {', '.join(h['rule'] for h in result.refusal['hits'])}",
                extensions={"recognition": msgspec.to_builtins(result),
                            "policy": result.refusal},
            )  # fmt: skip
        return result

    async def _check_not_revoked(
        self, conn: Connection, current: Any, claims: dict[str, Any], certificate: str
    ) -> None:
        """A certificate issued no later than the origin's last suspension or delisting of the
        product (whole seconds: its ``iat``) is revoked, unless it is the very certificate the
        origin's feed published since, which this exchange lists the product under now (a
        reinstatement in the second of the suspension still has its fresh certificate accepted).
        """
        origin, code = current["origin"], current["product_code"]
        if current["origin_state"] == "delisted":
            raise verify.CertificateRevoked(
                f"{origin} delisted {code}: every certificate it issued for it is revoked",
                extensions={"origin_state": "delisted"},
            )
        revoked_before = current["revoked_before"]
        issued = datetime.fromtimestamp(int(claims["iat"]), tz=UTC)
        if revoked_before is None or issued > revoked_before:
            return
        if current["origin_state"] == "listed" and current["outcome"] == "recognised":
            listed_under = await conn.fetchval(
                "SELECT certificate FROM products WHERE id = $1", current["product_id"]
            )
            if listed_under == certificate:
                return
        raise verify.CertificateRevoked(
            f"{origin} suspended {code} at {revoked_before.isoformat()}, after issuing this"
            f" certificate (at {issued.isoformat()}): present the one it issued since",
            extensions={"origin_state": current["origin_state"],
                        "revoked_before": revoked_before.isoformat()},
        )  # fmt: skip

    async def _lock(self, conn: Connection, origin: str, code: str) -> Any:
        return await conn.fetchrow(
            "SELECT * FROM recognitions WHERE origin = $1 AND product_code = $2 FOR UPDATE",
            origin, code,
        )  # fmt: skip

    async def _record_refusal(
        self, actor: Actor, what: str, code: str, error: verify.RecognitionError
    ) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await record(
                conn, actor, at=self.clock.now(), action=f"recognition.{what}_refused",
                subject_type="recognition", subject_id=code,
                detail={"code": error.code, "detail": error.detail},
            )  # fmt: skip

    async def _publish(
        self,
        conn: Connection,
        actor: Actor,
        origin: str,
        claims: dict[str, Any],
        metadata: ProductMetadata,
        credential: dict[str, Any] | None,
        credential_jws: str | None,
        certificate: str,
        current: Any,
        *,
        seq: int | None,
        hold: str | None = None,
    ) -> Recognition:
        """Apply a verified revision: under the local negative list, then list it here (or,
        with ``hold``, keep it off the market for withdrawn trust until the origin's feed has
        been read to its end)."""
        now = self.clock.now()
        code, revision = str(claims["sub"]), int(claims["revision"])
        digest = str(claims["revision_digest"])
        if (
            current is not None and current["outcome"] == "recognised"
            and current["revision"] == revision and current["origin_state"] == "listed"
        ):  # fmt: skip
            return _recognition(current)  # the same revision again: nothing to do
        decision = evaluate(
            evaluation_document(metadata, legal_prohibition=False), await self.policy.current(conn)
        )
        product_id = current["product_id"] if current is not None else None
        if decision.decision == "reject":
            refusal: dict[str, Any] = {
                "list_version": decision.list_version,
                "hits": [
                    {"rule": h.rule, "title_zh": h.title_zh, "title_en": h.title_en,
                     "explanation_zh": h.explanation_zh, "explanation_en": h.explanation_en}
                    for h in decision.hits if h.list == "negative"
                ],
            }  # fmt: skip
            if product_id is not None:  # an earlier revision was recognised: it goes too
                await self.listings.hold_recognised(
                    conn, product_id, "refuse_here", REFUSED_HERE, now
                )
            row = await self._upsert(
                conn, origin, code, product_id, revision, digest, "listed", "refused", refusal,
                seq, now,
            )  # fmt: skip
            await record(
                conn, actor, at=now, action="recognition.refused_by_policy",
                subject_type="recognition", subject_id=code,
                detail={"origin": origin, "revision": revision,
                        "rules": [h["rule"] for h in refusal["hits"]],
                        "list_version": decision.list_version},
            )  # fmt: skip
            return _recognition(row)
        if credential is not None and credential_jws is not None:
            seller_id = await self._accept_credential(
                conn, actor, origin, credential, credential_jws
            )
        else:
            seller_id = await self._credentialed_seller(conn, origin, claims)
        product_id = await self.listings.recognise(
            conn, product_id=product_id, seller_id=seller_id, code=code, origin=origin,
            revision=revision, metadata=metadata, digest=digest, certificate=certificate, at=now,
            hold=hold,
        )  # fmt: skip
        row = await self._upsert(
            conn, origin, code, product_id, revision, digest, "listed", "recognised", None, seq,
            now,
        )  # fmt: skip
        # The origin listed this revision after its review: the product's cautious hits under
        # this exchange's list count as cleared for orders here, as a local review would.
        cautious = [h.rule for h in decision.hits if h.list == "cautious" and h.scope == "product"]
        await conn.execute(
            "UPDATE recognitions SET cleared = $3 WHERE origin = $1 AND product_code = $2",
            origin, code, cautious,
        )  # fmt: skip
        await record(
            conn, actor, at=now, action="recognition.recognised", subject_type="recognition",
            subject_id=code,
            detail={"origin": origin, "revision": revision, "digest": digest,
                    "product_id": str(product_id), "feed_seq": seq,
                    "cautious": [h.rule for h in decision.hits]},
        )  # fmt: skip
        return _recognition(row)

    async def _credentialed_seller(
        self, conn: Connection, origin: str, claims: dict[str, Any]
    ) -> uuid.UUID:
        """The seller, registered here earlier from an unexpired credential of the origin."""
        uscc = (claims.get("seller") or {}).get("uscc")
        org_id: uuid.UUID | None = await conn.fetchval(
            "SELECT o.id FROM organisations o JOIN accepted_credentials c ON c.org_id = o.id"
            " WHERE o.uscc = $1 AND c.issuer = $2 AND c.expires_at > $3 LIMIT 1",
            uscc, origin, self.clock.now(),
        )  # fmt: skip
        if org_id is None:
            raise verify.CredentialInvalid(
                f"the seller {uscc} holds no unexpired member credential of {origin} here:"
                " present one with the certificate",
                extensions={"uscc": uscc, "issuer": origin},
            )
        return org_id

    async def _upsert(
        self,
        conn: Connection,
        origin: str,
        code: str,
        product_id: uuid.UUID | None,
        revision: int,
        digest: str,
        origin_state: str,
        outcome: str,
        refusal: dict[str, Any] | None,
        seq: int | None,
        now: datetime,
        revoked_before: datetime | None = None,
    ) -> Any:
        return await conn.fetchrow(
            """
            INSERT INTO recognitions (origin, product_code, product_id, revision, revision_digest,
                origin_state, outcome, refusal, revoked_before, feed_seq, updated_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, coalesce($10, 0), $11)
            ON CONFLICT (origin, product_code) DO UPDATE SET product_id = excluded.product_id,
                revision = excluded.revision, revision_digest = excluded.revision_digest,
                origin_state = excluded.origin_state, outcome = excluded.outcome,
                refusal = excluded.refusal,
                revoked_before = coalesce(excluded.revoked_before, recognitions.revoked_before),
                feed_seq = greatest(recognitions.feed_seq, excluded.feed_seq),
                updated_at = excluded.updated_at
            RETURNING *
            """,
            origin, code, product_id, revision, digest, origin_state, outcome, refusal,
            revoked_before, seq, now,
        )  # fmt: skip

    # --- the peer's feed, applied here ---------------------------------------------------------

    async def pull(self, peer_code: str, fetch: Fetch, actor: Actor) -> int:
        """Fetch one page of a trusted peer's feed after our cursor and apply it; returns items
        applied.

        ``fetch(url)`` returns the decoded JSON body (an HTTP GET; a parameter so the caller
        chooses the client). Items at or below the cursor are skipped, so two replicas pulling
        the same peer apply each item once."""
        return await self._pull(peer_code, fetch, actor, catching_up=False)

    async def _pull(self, peer_code: str, fetch: Fetch, actor: Actor, *, catching_up: bool) -> int:
        """One page, of a trusted peer or (``catching_up``) of a distrusted one being read to
        its end before it is trusted again, its products held here meanwhile."""
        peer = await self.pool.fetchrow(
            "SELECT * FROM peers WHERE code = $1 AND (removed_at IS NULL OR $2)",
            peer_code, catching_up,
        )  # fmt: skip
        if peer is None:
            return 0
        page = await self._fetch_page(peer, fetch)
        applied = 0
        for item in page.items:
            applied += await self._apply_item(peer_code, item, actor, catching_up=catching_up)
        await self.pool.execute(
            "UPDATE peers SET last_error = NULL, last_pull_at = $2 WHERE code = $1",
            peer_code, self.clock.now(),
        )  # fmt: skip
        return applied

    async def _fetch_page(self, peer: Any, fetch: Fetch) -> FeedClaims:
        """`_read_page`; a failure is kept on the peer (``last_error``) and raised."""
        try:
            return await _read_page(peer, fetch)
        except Exception as error:
            await self.pool.execute(
                "UPDATE peers SET last_error = $2, last_pull_at = $3 WHERE code = $1",
                peer["code"], _error_text(error), self.clock.now(),
            )  # fmt: skip
            raise

    async def _apply_item(
        self, origin: str, item: FeedItem, actor: Actor, *, catching_up: bool
    ) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            cursor = await conn.fetchval(
                "SELECT cursor FROM peers WHERE code = $1 AND (removed_at IS NULL OR $2)"
                " FOR UPDATE",
                origin, catching_up,
            )  # fmt: skip
            if cursor is None or item.seq <= cursor:
                return 0
            try:
                async with conn.transaction():  # a savepoint: a refused item still moves on
                    await self._apply_event(conn, origin, item, actor, catching_up=catching_up)
            except verify.RecognitionError as error:
                log.warning("feed_item_refused", origin=origin, seq=item.seq,
                            code=error.code, detail=error.detail)  # fmt: skip
                await record(
                    conn, actor, at=self.clock.now(), action="recognition.feed_item_refused",
                    subject_type="recognition", subject_id=item.product_code,
                    detail={"origin": origin, "seq": item.seq, "code": error.code,
                            "detail": error.detail},
                )  # fmt: skip
            await conn.execute("UPDATE peers SET cursor = $2 WHERE code = $1", origin, item.seq)
        return 1

    async def _apply_event(
        self, conn: Connection, origin: str, item: FeedItem, actor: Actor, *, catching_up: bool
    ) -> None:
        current = await self._lock(conn, origin, item.product_code)
        if current is not None and item.seq <= current["feed_seq"]:
            return
        if item.event == "published":
            if item.certificate is None or item.metadata is None:
                raise verify.BadSignature(f"feed item {item.seq} has no certificate or metadata")
            peers = await self.trusted_keys(conn, origin if catching_up else None)
            claims = verify.verify_signed(
                item.certificate, origin, peers[origin], typ=CERTIFICATE_TYPE
            ).claims
            metadata = verify.check_metadata(claims, item.metadata)
            if current is not None and int(claims["revision"]) < current["revision"]:
                raise verify.RevisionReplayed(
                    f"revision {claims['revision']} is older than {current['revision']}"
                )
            if item.credential is None:
                raise verify.CredentialInvalid(
                    f"the seller of {item.product_code} holds no member credential of {origin}"
                )
            issuer, credential = self._verify_credential(item.credential, peers)
            if issuer != origin:
                raise verify.CredentialInvalid(f"credential by {issuer}, not by {origin}")
            verify.check_credential_holder(credential, claims)
            await self._publish(
                conn, actor, origin, claims, metadata, credential, item.credential,
                item.certificate, current, seq=item.seq,
                hold=_distrusted(origin) if catching_up else None,
            )  # fmt: skip
            return
        # suspended / delisted: every certificate issued so far is revoked.
        now = self.clock.now()
        product_id = current["product_id"] if current is not None else None
        if product_id is not None:
            reason = f"{item.event} by {origin}" + (f": {item.reason}" if item.reason else "")
            await self.listings.hold_recognised(
                conn, product_id,
                "origin_suspend" if item.event == "suspended" else "origin_delist", reason, now,
            )  # fmt: skip
        await self._upsert(
            conn, origin, item.product_code, product_id,
            item.revision or (current["revision"] if current is not None else 0),
            item.revision_digest or (current["revision_digest"] if current is not None else ""),
            "suspended" if item.event == "suspended" else "delisted",
            current["outcome"] if current is not None else "refused",
            current["refusal"] if current is not None else None,
            item.seq, now, revoked_before=item.at,
        )  # fmt: skip
        await record(
            conn, actor, at=now, action=f"recognition.origin_{item.event}",
            subject_type="recognition", subject_id=item.product_code,
            detail={"origin": origin, "seq": item.seq, "reason": item.reason,
                    "product_id": str(product_id) if product_id else None},
        )  # fmt: skip
