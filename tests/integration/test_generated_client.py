"""A real client generator on the served document, and one whole trade through its client.

`openapi-python-client` (0.29.1) generates a Python client from ``/schema/openapi.json`` as a
running exchange (`dataex up`, on the test run's PostgreSQL and NATS) serves it. Any warning of
the generator fails the test: a warning is a schema it could not model or an endpoint it left
out. The client then drives a trade over HTTP as sellers, buyers and staff would: organisations
and tokens, a key, a product, its review, a standing offer, money in, an order, the contract and
its signature, settlement and acceptance, the receipt. Every answer must be parsed into the
generated model the document names (never None, a Problem or a raw dict).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from exchange.platform.signing import b64url, load_master_key
from tests.kit.api import make_uscc, org_body
from tests.kit.documents import metadata
from tests.kit.market import Signer, order_body
from tests.kit.processes import server_env
from tests.kit.up import Exchange

pytestmark = pytest.mark.system

GENERATOR = "openapi-python-client"
PACKAGE = "dataex_generated_client"
DEPOSIT_FEN = 5_000_000


@pytest.fixture
def exchange(settings: Any, tmp_path: Path) -> Iterator[Exchange]:
    """`dataex up` on the test run's servers (emptied for this test), one API worker."""
    state = tmp_path / "state"
    env = server_env(settings, state) | {
        # The run's database holds keys sealed under the run's master key.
        "DATAEX_MASTER_KEY": b64url(load_master_key(settings.state_dir)),
        "DATAEX_API_WORKERS": "1",
    }
    up = Exchange(state, **{k: v for k, v in env.items() if k.startswith("DATAEX_")})
    try:
        up.start()
        yield up
    finally:
        up.stop()


def generate(url: str, into: Path) -> tuple[Any, str]:
    """The client generated from the document ``url`` serves (a package under ``into``), and
    what the generator said."""
    with urllib.request.urlopen(f"{url}/schema/openapi.json", timeout=10) as response:
        document = into / "openapi.json"
        document.write_bytes(response.read())
    bin_dir = Path(sys.executable).parent
    result = subprocess.run(
        [str(bin_dir / GENERATOR), "generate", "--path", str(document),
         "--output-path", str(into / PACKAGE), "--meta", "none"],
        capture_output=True, text=True, timeout=300, check=False,
        # Its post-hooks format the code with ruff, from this environment.
        env=os.environ | {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"},
    )  # fmt: skip
    said = result.stdout + result.stderr
    assert result.returncode == 0, said
    sys.path.insert(0, str(into))
    return importlib.import_module(PACKAGE), said


def test_generator_warns_of_nothing_and_its_client_runs_a_whole_trade(exchange, tmp_path):
    package, said = generate(exchange.url, tmp_path)
    try:
        # "Warning(s) encountered while generating" / "Unable to parse …": a schema it could
        # not model, an endpoint or a response it left out.
        assert "warning" not in said.lower() and "unable" not in said.lower(), said
        trade(package, exchange.url, exchange.token)
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == PACKAGE or m.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def trade(package: Any, url: str, admin_token: str) -> None:
    def api(name: str) -> Any:
        return importlib.import_module(f"{PACKAGE}.api.{name}")

    models = importlib.import_module(f"{PACKAGE}.models")

    def client(token: str | None = None) -> Any:
        # An answer of a status the document does not declare raises.
        if token is None:
            return package.Client(base_url=url, raise_on_unexpected_status=True)
        return package.AuthenticatedClient(
            base_url=url, token=token, raise_on_unexpected_status=True
        )

    def parsed(answer: Any, model: str) -> Any:
        assert isinstance(answer, getattr(models, model)), answer
        return answer

    public, admin = client(), client(admin_token)
    parsed(api("health.live").sync(client=public), "Liveness")
    keys = parsed(api("keys.jwks").sync(client=public), "JwkSet")
    assert keys.keys and all(isinstance(k, models.PublicJwk) for k in keys.keys)

    # Organisations and their tokens (the operator's admin token does the staff's part).
    def organisation(n: int, role: str) -> tuple[Any, Any]:
        body = models.OrganisationCreate.from_dict(org_body(make_uscc(n), [role]))
        org = parsed(api("organisations.register_organisation").sync(client=admin, body=body),
                     "Organisation")  # fmt: skip
        issued = parsed(
            api("organisations.issue_token").sync(
                org.id, client=admin,
                body=models.TokenCreate.from_dict({"name": "generated", "roles": [role]}),
            ),
            "TokenIssued",
        )  # fmt: skip
        return org, client(issued.token)

    _, seller = organisation(101, "seller")
    buyer_org, buyer = organisation(102, "buyer")
    me = parsed(api("tokens.who_am_i").sync(client=buyer), "Me")
    assert me.organisation.id == buyer_org.id

    # Keys: each party's own Ed25519 key.
    signers = {}
    for name, party in (("seller", seller), ("buyer", buyer)):
        signer = Signer()
        # Built, not from_dict: the generator's from_dict names its source dict ``d``, which
        # a JWK's own ``d`` (refused here: a private key) overwrites. Requests only.
        jwk = models.PublicKeyIn(kty="OKP", crv="Ed25519", x=signer.public["x"])
        key = parsed(api("keys.register_key").sync(client=party, body=jwk), "OrgKey")
        signer.kid = key.kid
        signers[name] = signer

    # A product, its review, its listing.
    draft = parsed(
        api("products.create_product").sync(
            client=seller, body=models.ProductDraft.from_dict(metadata())
        ),
        "Product",
    )
    submitted = parsed(api("products.submit_product").sync(draft.id, client=seller), "Product")
    case_id = submitted.review.case_id
    parsed(api("reviews.claim_review_case").sync(case_id, client=admin), "ReviewCase")
    decided = parsed(
        api("reviews.decide_review_case").sync(
            case_id, client=admin,
            body=models.DecisionCreate.from_dict({"verdict": "approve", "reason": "ok"}),
        ),
        "ReviewCase",
    )  # fmt: skip
    assert decided.state == "approved", decided
    product = parsed(api("products.get_product").sync(draft.id, client=seller), "Product")
    assert product.state == "listed" and product.product_code
    found = parsed(api("products.list_products").sync(client=public), "CatalogPage")
    assert [item.product_id for item in found.items] == [product.id]
    catalog = parsed(api("catalog.get_catalog").sync(client=public), "DcatCatalog")
    # Compact IRIs become attribute names: dcat:dataset is dcatdataset.
    assert [d.dctidentifier for d in catalog.dcatdataset] == [product.product_code]

    # The seller's standing offer on the plan.
    terms = parsed(
        api("products.get_offer_terms").sync(product.id, "std", client=seller), "OfferTerms"
    )
    signer = signers["seller"]
    offer = parsed(
        api("products.make_standing_offer").sync(
            product.id, client=seller,
            body=models.StandingOfferIn(
                plan_id="std", jws=signer.detached(signer.kid, terms.canonical.encode())
            ),
        ),
        "StandingOffer",
    )  # fmt: skip
    assert offer.digest == terms.digest

    # Money in (a deposit, and the same one replayed: 200, the first one).
    deposit = api("accounts.deposit")
    money = models.ExternalMovementIn(amount_fen=DEPOSIT_FEN, external_ref=f"gen-{uuid.uuid4()}")
    first = deposit.sync_detailed(buyer_org.id, client=admin, body=money)
    again = deposit.sync_detailed(buyer_org.id, client=admin, body=money)
    assert (first.status_code, again.status_code) == (201, 200)
    assert parsed(first.parsed, "MovementView").id == parsed(again.parsed, "MovementView").id

    # The order: the seller's side is signed by its standing offer, the buyer signs.
    placed = parsed(
        api("orders.place_order").sync(
            client=buyer,
            body=models.OrderCreate.from_dict(order_body(str(product.id))),
            idempotency_key=str(uuid.uuid4()),
        ),
        "Order",
    )
    assert placed.state == "awaiting_signatures" and placed.trade_id is None
    contract = parsed(
        api("contracts.get_contract").sync(placed.contract_id, client=buyer), "Contract"
    )
    assert isinstance(contract.document, models.ContractDocument)
    assert contract.document.fees.price_fen == placed.price_fen
    signer = signers["buyer"]
    signed = parsed(
        api("contracts.sign_contract").sync(
            contract.id, client=buyer,
            body=models.SignatureIn(jws=signer.detached(signer.kid, contract.digest.encode())),
        ),
        "Contract",
    )  # fmt: skip
    assert signed.state == "executed"
    assert signed.trade_id == signed.id  # the trade's id is its contract's
    assert {s.kind for s in signed.signatures} == {
        "standing_offer", "signature", "countersignature"
    }  # fmt: skip
    order = parsed(api("orders.get_order").sync(placed.id, client=buyer), "Order")
    assert order.state == "executed" and order.trade_id == contract.id

    # Settlement: the worker reserves price and fee in escrow; the buyer accepts; it posts.
    trade_id = order.trade_id
    get_trade = api("trades.get_trade")
    deadline = time.monotonic() + 30
    while (view := get_trade.sync(trade_id, client=buyer)) is not None and not isinstance(
        view, models.TradeView
    ):
        assert isinstance(view, models.Problem) and view.status == 404, view
        assert time.monotonic() < deadline, "the trade was not registered within 30 s"
        time.sleep(0.1)
    assert parsed(view, "TradeView").state == "reserved", view
    accepted = parsed(api("trades.accept_trade").sync(trade_id, client=buyer), "TradeView")
    assert accepted.state == "settled"
    accounts = parsed(api("accounts.get_my_accounts").sync(client=seller), "Accounts")
    assert accounts.available_fen == order.price_fen

    # The receipt: the trade's ledger entries with inclusion proofs under a signed tree head.
    receipt = parsed(api("trades.get_trade_receipt").sync(trade_id, client=seller), "Receipt")
    assert receipt.trade_id == str(trade_id)
    assert [e.entry.step for e in receipt.entries] == ["reserved", "settled"]
    assert all(isinstance(e, models.ReceiptEntry) for e in receipt.entries)
