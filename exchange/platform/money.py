"""Money: whole fen (1/100 yuan, or milli-fen for metered unit prices) as integers, never floats,
and never beyond 2^53 - 1.

Amounts leave the exchange as JSON numbers: to browsers and peers, whose JSON readers hold
numbers as IEEE doubles (exact for integers up to 2^53 - 1 only), and into the RFC 8785
canonical JSON that contracts, offers and statements are signed over, which refuses any integer
beyond it. So that is the ceiling of every amount a request gives and of every amount computed
from them (an order's price x quantity and its fee), checked when the request is validated: a
422 naming the field and the bound, rather than a 500 when a contract is signed.
"""

from __future__ import annotations

from typing import Final

import msgspec

from exchange.platform.limits import MAX_JSON_INTEGER

MAX_FEN: Final = MAX_JSON_INTEGER


def fen(*, ge: int = 0, le: int = MAX_FEN) -> msgspec.Meta:
    """The bounds of an amount of money in a request schema: ``Annotated[int, fen(ge=1,
    le=10**12)]``. Each field keeps its own range; none may reach past `MAX_FEN`."""
    if not 0 <= ge <= le <= MAX_FEN:
        raise ValueError(f"an amount's bounds lie within 0..{MAX_FEN}, got {ge}..{le}")
    return msgspec.Meta(ge=ge, le=le)
