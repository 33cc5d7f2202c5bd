"""A metered trade's receipt, offline: its usage statements are signed, and each is the one a
usage entry of the receipt registered (no server: a key, entries and a tree made here)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from exchange.platform.canonical import canonical_json, sha256_digest
from exchange.platform.events import UsageStatement
from exchange.platform.signing import SigningKey, _kid, public_jwk
from settlement import book, ledger
from settlement.merkle import MerkleTree, leaf_hash

TRADE = str(uuid.uuid4())


def statement(period: int, charge: int) -> UsageStatement:
    return UsageStatement(
        exchange="DX", grant_id=str(uuid.uuid4()), trade_id=TRADE, product_code="DX-1",
        buyer_org_id="b", seller_org_id="s", period=period, starts_at="a", ends_at="b",
        records=1, totals={"requests": 1}, cost_millifen=charge * 1000,
        cumulative_cost_millifen=charge * 1000, charge_fen=charge, final=False,
    )  # fmt: skip


def receipt(detached: bool = False) -> tuple[bytes, dict[str, Any]]:
    private = Ed25519PrivateKey.generate()
    key = SigningKey(_kid(private.public_key()), private)
    keys = {"keys": [public_jwk(private.public_key(), key.kid)]}
    party = ledger.EntryParty("b", None)
    statements = [statement(1, 30), statement(2, 0)]
    steps: list[tuple[ledger.Step, UsageStatement | None]] = [
        ("reserved", None), ("usage", statements[0]), ("usage", statements[1]),
    ]  # fmt: skip
    prev, bodies = ledger.GENESIS_PREV, []
    for seq, (step, used) in enumerate(steps):
        body = ledger.canonical(ledger.LedgerEntry(
            seq=seq, prev=prev, exchange="DX", trade_id=TRADE, step=step,
            contract_digest="sha256:" + "ab" * 32, product_code="DX-1", buyer=party,
            seller=party, price_fen=29 if used else 1000, fee_fen=1 if used else 0,
            movement_id=None, at=ledger.timestamp(datetime.now(UTC)),
            period=used.period if used else None,
            statement_digest=sha256_digest(used) if used else None,
        ))  # fmt: skip
        bodies.append(body)
        prev = leaf_hash(body).hex()
    tree = MerkleTree(leaf_hash(b) for b in bodies)
    claims = ledger.TreeHeadClaims(exchange="DX", tree_size=tree.size,
                                   root_hash=tree.root().hex(), timestamp="now")  # fmt: skip
    token = key.sign_compact(claims, typ=ledger.TREE_HEAD_TYPE)
    head = ledger.TreeHead(tree.size, claims.root_hash, claims.timestamp, key.kid, token)

    def sign(s: UsageStatement) -> str:
        if detached:
            return key.sign_detached(canonical_json(s), typ="dataex-usage-statement+jws")
        return key.sign_compact(s, typ="dataex-usage-statement+jws")

    signed = [(canonical_json(s), sha256_digest(s), sign(s)) for s in statements]
    return ledger.build_receipt("DX", TRADE, bodies, tree, head, signed), keys


@pytest.mark.parametrize("detached", [False, True])
def test_a_receipt_with_statements_verifies_with_the_jwks_alone(detached):
    data, keys = receipt(detached)
    verified = ledger.verify_receipt(data, keys)
    assert [s.statement["period"] for s in verified.statements] == [1, 2]


def test_a_statement_changed_missing_or_not_registered_fails():
    data, keys = receipt()

    def with_(change):
        body = msgspec.json.decode(data)
        change(body)
        return ledger.canonical(body)

    def other_trade(body):
        item = body["statements"][0]
        item["statement"]["trade_id"] = str(uuid.uuid4())

    cases = [
        (lambda b: b["statements"][0]["statement"].update(charge_fen=31), "hash to its digest"),
        (lambda b: b["statements"].pop(), "has no statement"),
        (lambda b: b["statements"].append(b["statements"][0]), "not registered"),
        (lambda b: b["entries"].pop(), "not registered"),
        (other_trade, "hash to its digest"),
        (lambda b: b["statements"][0].update(jws="x.y"), "not a JWS"),
    ]
    for change, why in cases:
        with pytest.raises(ledger.ReceiptInvalid, match=why):
            ledger.verify_receipt(with_(change), keys)
    with pytest.raises(ledger.ReceiptInvalid, match="signature"):
        ledger.verify_receipt(data, {"keys": []})


def test_keyless_steps_keep_their_movement_ids_and_a_period_moves_the_fee_from_the_seller():
    trade, buyer, seller = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    namespace = uuid.UUID("6f1d4c0e-5d1b-4c59-9f1e-2b7f0e1d5a10")
    assert book.trade_movement_id(trade, "post") == uuid.uuid5(namespace, f"{trade}:post")
    assert book.trade_movement_id(trade, "usage", "g:1") != book.trade_movement_id(
        trade, "usage", "g:2"
    )
    period = book.usage(trade, buyer, seller, 1_000, 25, "g:1")
    assert period.amount == 1_000 and period.step_key == "g:1"
    assert {(leg.owner, leg.kind): leg.amount for leg in period.legs} == {
        (buyer, "escrow"): -1_000, (seller, "available"): 975, (None, "fee_revenue"): 25,
    }  # fmt: skip
    assert book.top_up(trade, buyer, 5, "k").id == book.top_up(trade, buyer, 5, "k").id
    assert book.release(trade, buyer, 7).step_key is None
