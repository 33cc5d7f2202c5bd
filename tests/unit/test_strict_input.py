"""Strict input without a server (issue 17): how request bodies are decoded.
Over HTTP: tests/integration/test_strict_input.py."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import pytest

from exchange.platform.validation import decode_json


class Deposit(msgspec.Struct):
    amount_fen: Annotated[int, msgspec.Meta(ge=1, le=10**15)]
    final: bool = False
    rate: float = 0.0


@pytest.mark.parametrize("body", [b'{"amount_fen": "100"}', b'{"amount_fen": 100.0}',
                                  b'{"amount_fen": "1e2"}', b'{"amount_fen": 1e2}',
                                  b'{"amount_fen": true}', b'{"amount_fen": 100, "final": "true"}',
                                  b'{"amount_fen": 100, "final": 1}'])  # fmt: skip
def test_a_body_is_decoded_strictly(body):
    with pytest.raises(msgspec.ValidationError, match=r"Expected `(int|bool)`"):
        decode_json(body, Deposit)


def test_what_json_says_is_an_integer_or_a_number_still_decodes():
    assert decode_json(b'{"amount_fen": 100, "final": true, "rate": 2}', Deposit) == Deposit(
        100, True, 2.0
    )  # an integer where a float is asked for is a number all the same


@pytest.mark.parametrize(
    ("body", "byte", "at"),
    [
        (b'{"a": "\xff"}', 0xFF, 7),
        ('{"名": "数据'.encode() + b'\xe6\x95"}', 0xE6, 15),  # a character cut short
        (b'{"a": "\xed\xa0\x80"}', 0xED, 7),  # a surrogate, encoded
        (b'{"skipped": "\xc3(", "a": 1}', 0xC3, 13),  # in a field the target does not keep
    ],
)
def test_a_body_that_is_not_utf8_is_malformed_json_naming_the_byte(body, byte, at):
    for target in (Any, dict[str, int]):
        with pytest.raises(msgspec.DecodeError, match=f"not UTF-8 \\(byte 0x{byte:02x} at {at}\\)"):
            decode_json(body, target)
