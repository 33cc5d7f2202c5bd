"""Builders for a market over HTTP: sellers and reviewers, a buyer, listed products, standing
offers, orders and executed trades.

``open_market`` gives two sellers ("seller", whose organisation also holds the buyer role, and
"other") and two reviewers of the operator ("alice", "bob"); ``add_buyer`` adds a buyer and an
Ed25519 key each for the seller and the buyer. The fixtures ``market`` and ``trade``
(tests.kit.fixtures) are these two.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jws
from joserfc.jwk import OKPKey

from contracts.policy.service import PolicyService
from exchange.platform.audit import Actor
from exchange.platform.clock import Clock
from exchange.platform.settings import Settings
from exchange.runtime import ensure_signing_key
from tests.kit.api import bearer, issue_token, make_uscc, register_org
from tests.kit.documents import EVIDENCE, metadata


class Signer:
    """An organisation's own Ed25519 key, used through joserfc (an independent JOSE library)."""

    kid: str  # the key's id, once registered with the exchange (POST /v1/keys)

    def __init__(self) -> None:
        private = Ed25519PrivateKey.generate()
        self.key = OKPKey.import_key(private)
        self.public = self.key.as_dict(private=False)

    def detached(self, kid: str, payload: bytes) -> str:
        token = jws.serialize_compact(
            {"alg": "EdDSA", "kid": kid}, payload, self.key, algorithms=["EdDSA"]
        )
        header, _, signature = token.split(".")
        return f"{header}..{signature}"


# --- sellers, reviewers, buyers -----------------------------------------------------------------


async def open_market(
    client: Any, admin_token: str, pool: Any, clock: Clock, settings: Settings
) -> dict[str, Any]:
    """The first policy list and a signing key; two sellers and two reviewers, by token."""
    await PolicyService(pool, clock).ensure_initial_list(Actor.cli("test"))
    await ensure_signing_key(pool, settings)
    seller_org = await register_org(client, admin_token, make_uscc(1), ["seller", "buyer"])
    other_org = await register_org(client, admin_token, make_uscc(2), ["seller"])
    operator = (await client.get("/v1/me", headers=bearer(admin_token))).json()["organisation"][
        "id"
    ]
    return {
        "seller": await issue_token(client, admin_token, seller_org["id"], ["seller"]),
        "other": await issue_token(client, admin_token, other_org["id"], ["seller"]),
        "alice": await issue_token(client, admin_token, operator, ["reviewer"]),
        "bob": await issue_token(client, admin_token, operator, ["reviewer"]),
        "seller_org": seller_org,
    }


async def add_buyer(client: Any, admin_token: str, market: dict[str, Any]) -> dict[str, Any]:
    """The market, a buyer, and a registered Signer each for the seller and the buyer."""
    buyer_org = await register_org(client, admin_token, make_uscc(3), ["buyer"])
    buyer = await issue_token(client, admin_token, buyer_org["id"], ["buyer"])
    signers = {}
    for name, token in (("seller", market["seller"]), ("buyer", buyer)):
        signer = Signer()
        response = await client.post("/v1/keys", json=signer.public, headers=bearer(token))
        assert response.status_code == 201, response.text
        signer.kid = response.json()["kid"]
        signers[name] = signer
    return market | {"buyer": buyer, "buyer_org": buyer_org, "signers": signers}


# --- listed products ------------------------------------------------------------------------------


async def submit(client: Any, token: str, document: dict[str, Any]) -> dict[str, Any]:
    """Create a product and submit it for review; the product after submission."""
    created = await client.post("/v1/products", json=document, headers=bearer(token))
    assert created.status_code == 201, created.text
    product_id = created.json()["id"]
    response = await client.post(f"/v1/products/{product_id}/submit", headers=bearer(token))
    assert response.status_code == 200, response.text
    product: dict[str, Any] = response.json()
    return product


async def claim_and_decide(
    client: Any,
    reviewer: str,
    case_id: str,
    verdict: str = "approve",
    evidence: list[dict[str, Any]] | None = None,
    reason: str = "ok",
) -> Any:
    """Claim a review case and decide it; the decision's response (the claim's if refused)."""
    claim = await client.post(f"/v1/reviews/{case_id}/claim", headers=bearer(reviewer))
    if claim.status_code != 200:
        return claim
    return await client.post(
        f"/v1/reviews/{case_id}/decisions",
        json={"verdict": verdict, "reason": reason, "evidence": evidence or []},
        headers=bearer(reviewer),
    )


def evidence_for(*rules: str) -> list[dict[str, Any]]:
    return [
        {"rule": rule, "reference": EVIDENCE["uri"], "sha256": EVIDENCE["sha256"]} for rule in rules
    ]


async def list_product(
    client: Any,
    market: dict[str, Any],
    document: dict[str, Any] | None = None,
    evidence: Iterable[str] = (),
    seller: str | None = None,
) -> str:
    """A product submitted by ``seller`` (the market's "seller" by default) and approved by
    "alice" with evidence for the cautious ``evidence`` rules; its id."""
    product = await submit(client, seller or market["seller"], document or metadata())
    decided = await claim_and_decide(
        client, market["alice"], product["review"]["case_id"], evidence=evidence_for(*evidence)
    )
    assert decided.status_code == 200, decided.text
    return str(product["id"])


async def listed_product(
    client: Any, market: dict[str, Any], document: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A product listed by the market's "seller", as its seller reads it."""
    product_id = await list_product(client, market, document)
    listed: dict[str, Any] = (
        await client.get(f"/v1/products/{product_id}", headers=bearer(market["seller"]))
    ).json()
    return listed


# --- offers, orders, executed trades --------------------------------------------------------------


async def standing_offer(
    client: Any, trade: dict[str, Any], product_id: str, plan_id: str = "std"
) -> dict[str, Any]:
    """The seller signs the plan's offer as a standing offer; the offer's terms."""
    terms: dict[str, Any] = (
        await client.get(
            f"/v1/products/{product_id}/plans/{plan_id}/offer", headers=bearer(trade["seller"])
        )
    ).json()
    signer = trade["signers"]["seller"]
    response = await client.post(
        f"/v1/products/{product_id}/standing-offers",
        json={"plan_id": plan_id, "jws": signer.detached(signer.kid, terms["canonical"].encode())},
        headers=bearer(trade["seller"]),
    )
    assert response.status_code == 201, response.text
    return terms


def order_body(product_id: str, **overrides: Any) -> dict[str, Any]:
    return {
        "product_id": product_id,
        "plan_id": "std",
        "purpose": "research",
        "territory": ["CN"],
        "buyer_country": "CN",
        "delivery_country": "CN",
        "term_days": 180,
        "redistribution": False,
        "quantity": 2,
    } | overrides


async def place(
    client: Any, trade: dict[str, Any], body: dict[str, Any], key: str | None = None
) -> Any:
    """POST /v1/orders as the buyer, with ``key`` (a new one by default) as Idempotency-Key."""
    return await client.post(
        "/v1/orders",
        json=body,
        headers={**bearer(trade["buyer"]), "Idempotency-Key": key or str(uuid.uuid4())},
    )


async def auto_accept_product(client: Any, trade: dict[str, Any]) -> str:
    """A listed product whose 'std' plan auto-accepts, and a custodial buyer: each order executes
    in the request that places it."""
    product_id = await list_product(client, trade)
    await standing_offer(client, trade, product_id)
    key = await client.post("/v1/keys/custodial", headers=bearer(trade["buyer"]))
    assert key.status_code == 201, key.text
    return product_id


async def buy(client: Any, trade: dict[str, Any], product_id: str, quantity: int = 1) -> str:
    """Place an order that executes at once; returns the trade (contract) id."""
    response = await place(client, trade, order_body(product_id, quantity=quantity))
    assert response.status_code == 201, response.text
    order = response.json()
    assert order["state"] == "executed", order
    return str(order["contract_id"])


async def deposit(client: Any, admin: str, org_id: str, amount: int, ref: str) -> Any:
    return await client.post(
        f"/v1/accounts/{org_id}/deposits",
        json={"amount_fen": amount, "external_ref": ref},
        headers=bearer(admin),
    )
