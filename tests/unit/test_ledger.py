"""The registration ledger's entries are canonical JSON (RFC 8785)."""

from __future__ import annotations

import msgspec
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from settlement import ledger

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
