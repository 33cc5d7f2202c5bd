"""The registration ledger's entries are canonical JSON (RFC 8785)."""

from __future__ import annotations

from typing import Any

import msgspec
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from settlement import ledger
from settlement.merkle import leaf_hash

text = st.text(max_size=40)


@given(
    seq=st.integers(0, 2**53 - 1), amount=st.integers(-(2**53) + 1, 2**53 - 1), words=text,
    uscc=st.none() | text, movement=st.none() | text,
)  # fmt: skip
def test_entries_are_rfc8785_canonical(seq, amount, words, uscc, movement):
    entry = ledger.LedgerEntry(
        seq=seq, prev=words, exchange=words, trade_id=words, step="settled",
        contract_digest=words, product_code=words, buyer=ledger.EntryParty(words, uscc),
        seller=ledger.EntryParty(uscc or "", None), price_fen=amount, fee_fen=seq,
        movement_id=movement, at=words,
    )  # fmt: skip
    assert ledger.canonical(entry) == rfc8785.dumps(msgspec.to_builtins(entry))


def entry(**fields):
    base: dict[str, Any] = {
        "seq": 7, "prev": "ab" * 32, "exchange": "DX", "trade_id": "t", "step": "settled",
        "contract_digest": "sha256:" + "cd" * 32, "product_code": "DX-1",
        "buyer": ledger.EntryParty("b", None), "seller": ledger.EntryParty("s", "91"),
        "price_fen": 100, "fee_fen": 1, "movement_id": None, "at": "2026-01-01T00:00:00.000000Z",
    }  # fmt: skip
    return ledger.LedgerEntry(**(base | fields))


def test_entries_written_before_the_metered_fields_keep_their_bytes():
    # Exactly what an entry was before `period` and `statement_digest` existed: null where a
    # field has no value (movement_id), and nothing of the fields added since.
    assert ledger.canonical(entry()) == (
        b'{"at":"2026-01-01T00:00:00.000000Z","buyer":{"org_id":"b","uscc":null},'
        b'"contract_digest":"sha256:' + b"cd" * 32 + b'","exchange":"DX","fee_fen":1,'
        b'"movement_id":null,"prev":"' + b"ab" * 32 + b'","price_fen":100,"product_code":"DX-1",'
        b'"seller":{"org_id":"s","uscc":"91"},"seq":7,"step":"settled","trade_id":"t"}'
    )
    usage = entry(step="usage", period=3, statement_digest="sha256:" + "ef" * 32)
    body = ledger.canonical(usage)
    assert body == rfc8785.dumps(msgspec.to_builtins(usage))
    assert msgspec.json.decode(body, type=ledger.LedgerEntry) == usage
    verifier = ledger.Verifier()
    first = ledger.canonical(entry(seq=0, prev=ledger.GENESIS_PREV))
    second = ledger.canonical(
        entry(seq=1, prev=leaf_hash(first).hex(), step="usage", period=1,
              statement_digest="sha256:" + "ef" * 32)
    )  # fmt: skip
    verifier.feed([(0, first, None), (1, second, None)])
    assert verifier.problems == [] and verifier.entries == 2
