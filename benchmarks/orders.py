"""``dataex bench orders``: orders per second from HTTP request to executed contract.

Against a running exchange (``--url``, ``--admin-token``): registers a seller and a buyer,
lists a product with an auto-accept (standing offer) plan, then N concurrent buyers each place
an order (with an Idempotency-Key); the buyer uses custodial signing, so each order request
returns an executed contract. Runs for a fixed duration. Reports
executed contracts per second and latency percentiles. A figure, not a test.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import statistics
import time
import uuid
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from exchange.identity.uscc import synthetic_uscc
from exchange.platform.signing import b64url

if TYPE_CHECKING:
    import httpx  # the bench extra: imported where the requests are made


class _Key:
    def __init__(self) -> None:
        self.private = Ed25519PrivateKey.generate()
        x = b64url(self.private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
        self.jwk = {"kty": "OKP", "crv": "Ed25519", "x": x}
        self.kid = ""

    def detached(self, payload: bytes) -> str:
        header = b64url(json.dumps({"alg": "EdDSA", "kid": self.kid}).encode())
        signature = self.private.sign(f"{header}.{b64url(payload)}".encode())
        return f"{header}..{b64url(signature)}"


SAMPLE_PRODUCT: dict[str, Any] = {
    "name_zh": "基准测试数据集", "summary": "用于吞吐量测试的数据产品。", "product_type": "dataset",
    "sector": "OTHER",
    "manual": {"fields": [{"name": "k", "type": "string", "meaning": "键"}],
               "scale": {"rows": 1000}, "time_coverage": {"start": "2024-01-01"},
               "update_frequency": "daily", "format": "csv", "sample": {"rows": [{"k": "a"}]}},
    "contact": {"name": "测试", "email": "bench@example.cn", "phone": "+86 21 0000 0000"},
    "source": {"kind": "self_generated", "lawful_statement": "自有数据。", "legality_proof": True,
               "upstream_forbids_resale": False,
               "evidence": [{"name": "proof", "uri": "doc://bench",
                             "sha256": hashlib.sha256(b"bench").hexdigest()}]},
    "classification": {
        "data_level": "general", "general_grade": 1,
        "personal_info": {"present": False, "state": "anonymised", "sensitive": False,
                          "minors_under_14": False, "subject_count": 0,
                          "separate_consent_for_supply": False, "guardian_consent": False},
        "third_party_rights": {"trade_secrets": False, "authorised": False},
        "public_data": {"involved": False, "channel": "none"}},
    "rights": {"holding": False, "use": True, "operating": False},
    "delivery": ["api"],
    "plans": [{"id": "auto", "name": "自动成交", "pricing": "metered", "price_fen": 100,
               "free": False, "purposes": ["research"], "territory": ["CN"],
               "max_term_days": 365, "redistribution": False, "acceptance_days": 3}],
}  # fmt: skip


@dataclass
class _Run:
    latencies: list[float] = field(default_factory=list)
    place_latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)


async def _ok(response: httpx.Response) -> Any:
    if response.status_code >= 300:
        raise RuntimeError(f"{response.request.method} {response.request.url}: {response.text}")
    return response.json()


async def _setup(client: httpx.AsyncClient, admin: str) -> tuple[str, str, _Key, str]:
    auth = {"Authorization": f"Bearer {admin}"}
    contact = {"name": "测试", "email": "bench@example.cn", "phone": "+86 21 0000 0000"}
    tokens = {}
    for role in ("seller", "buyer"):
        org = await _ok(await client.post("/v1/organisations", headers=auth, json={
            "name": f"基准{role}", "uscc": synthetic_uscc(uuid.uuid4().int), "roles": [role],
            "region": "310000",
            "contact": contact}))  # fmt: skip
        issued = await _ok(
            await client.post(
                f"/v1/organisations/{org['id']}/tokens",
                headers=auth,
                json={"name": "bench", "roles": [role]},
            )
        )
        tokens[role] = issued["token"]
    keys = {}
    for role in ("seller", "buyer"):
        key = _Key()
        key.kid = (
            await _ok(
                await client.post(
                    "/v1/keys", json=key.jwk, headers={"Authorization": f"Bearer {tokens[role]}"}
                )
            )
        )["kid"]
        keys[role] = key
    seller = {"Authorization": f"Bearer {tokens['seller']}"}
    product = await _ok(await client.post("/v1/products", json=SAMPLE_PRODUCT, headers=seller))
    product = await _ok(await client.post(f"/v1/products/{product['id']}/submit", headers=seller))
    case = product["review"]["case_id"]
    await _ok(await client.post(f"/v1/reviews/{case}/claim", headers=auth))
    await _ok(
        await client.post(
            f"/v1/reviews/{case}/decisions",
            headers=auth,
            json={"verdict": "approve", "reason": "bench"},
        )
    )
    terms = await _ok(
        await client.get(f"/v1/products/{product['id']}/plans/auto/offer", headers=seller)
    )
    await _ok(
        await client.post(
            f"/v1/products/{product['id']}/standing-offers",
            headers=seller,
            json={"plan_id": "auto", "jws": keys["seller"].detached(terms["canonical"].encode())},
        )
    )
    # The buyer opts for custodial signing: its order is its signature, so an auto-accept
    # order executes in the one request.
    await _ok(
        await client.post(
            "/v1/keys/custodial", headers={"Authorization": f"Bearer {tokens['buyer']}"}
        )
    )
    return product["id"], tokens["buyer"], keys["buyer"], tokens["seller"]


async def _buyer(
    client: httpx.AsyncClient, product_id: str, token: str, deadline: float, run: _Run
) -> None:
    import httpx

    headers = {"Authorization": f"Bearer {token}"}
    body = {
        "product_id": product_id,
        "plan_id": "auto",
        "purpose": "research",
        "territory": ["CN"],
        "buyer_country": "CN",
        "delivery_country": "CN",
        "term_days": 30,
        "redistribution": False,
        "quantity": 10,
    }
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        try:
            placed = await client.post(
                "/v1/orders", json=body, headers=headers | {"Idempotency-Key": str(uuid.uuid4())}
            )
            order = await _ok(placed)
            run.place_latencies.append(time.perf_counter() - started)
            if order["state"] == "executed":
                run.latencies.append(time.perf_counter() - started)
            else:
                run.errors["not_executed"] = run.errors.get("not_executed", 0) + 1
        except (RuntimeError, httpx.HTTPError) as error:
            name = type(error).__name__
            run.errors[name] = run.errors.get(name, 0) + 1


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] * 1000


async def bench_orders(
    url: str, admin: str, duration: float, concurrency: int, out: IO[str]
) -> int:
    import httpx

    limits = httpx.Limits(max_connections=concurrency * 2)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        product_id, buyer, _key, _seller = await _setup(client, admin)
        run = _Run()
        started = time.perf_counter()
        deadline = started + duration
        await asyncio.gather(
            *(_buyer(client, product_id, buyer, deadline, run) for _ in range(concurrency))
        )
        elapsed = time.perf_counter() - started
    executed = len(run.latencies)
    print(f"duration {elapsed:.1f} s, concurrency {concurrency}", file=out)
    print(f"executed contracts      {executed} ({executed / elapsed:,.1f}/s)", file=out)
    print(
        f"order → executed         p50 {_pct(run.latencies, 50):.1f} ms"
        f"  p95 {_pct(run.latencies, 95):.1f} ms  p99 {_pct(run.latencies, 99):.1f} ms",
        file=out,
    )
    print(
        f"place order             p50 {_pct(run.place_latencies, 50):.1f} ms"
        f"  p95 {_pct(run.place_latencies, 95):.1f} ms"
        f"  p99 {_pct(run.place_latencies, 99):.1f} ms",
        file=out,
    )
    print(f"errors                  {run.errors or 'none'}", file=out)
    return 0 if not run.errors else 1
