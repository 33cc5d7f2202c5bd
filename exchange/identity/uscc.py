"""Unified social credit code (统一社会信用代码, GB 32100-2015): pure validation."""

from __future__ import annotations

from typing import Final

ALPHABET: Final = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_VALUE: Final = {char: index for index, char in enumerate(ALPHABET)}
# Position i (1-based) of the first 17 carries weight 3^(i-1) mod 31.
WEIGHTS: Final = tuple(pow(3, i, 31) for i in range(17))


class UsccError(ValueError):
    """A code that fails one rule; ``rule`` names which (length, alphabet, division, check)."""

    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


def check_character(first17: str) -> str:
    """The check character for the first 17 characters."""
    total = sum(_VALUE[c] * w for c, w in zip(first17, WEIGHTS, strict=True)) % 31
    return ALPHABET[(31 - total) % 31]


def normalise_uscc(raw: str) -> str:
    """Upper-cased, validated code; raises `UsccError` naming the first rule that fails."""
    code = raw.strip().upper()
    if len(code) != 18:
        raise UsccError("length", f"must be 18 characters, got {len(code)}")
    for position, char in enumerate(code, start=1):
        if char not in _VALUE:
            if position == 18 and all(c in _VALUE for c in code[:17]) and code[2:8].isdigit():
                raise UsccError(
                    "check",
                    f"check character: expected {check_character(code[:17])}, got {char}"
                    " (which is not even in the code alphabet)",
                )
            raise UsccError(
                "alphabet",
                f"character {char!r} at position {position} is not allowed"
                " (digits and upper-case letters except I, O, S, V, Z)",
            )
    division = code[2:8]
    if not division.isdigit():
        raise UsccError(
            "division",
            f"positions 3-8 (administrative division code) must be digits, got {division!r}",
        )
    expected = check_character(code[:17])
    if code[17] != expected:
        raise UsccError("check", f"check character: expected {expected}, got {code[17]}")
    return code


def synthetic_uscc(n: int, prefix: str = "91310000") -> str:
    """A valid code for benchmarks and seed data: ``prefix`` (8 characters: registration
    authority, organisation type, division), nine characters from ``n``, the check character."""
    body = prefix + "".join(ALPHABET[(n // 31**i) % 31] for i in range(9))
    return body + check_character(body)
