"""Keyset (cursor) pagination: opaque cursors that carry the last row's sort key. No OFFSET."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import msgspec

from exchange.platform.errors import FieldError, InvalidInput

MAX_PAGE = 200
DEFAULT_PAGE = 50
# Largest value a PostgreSQL bigint holds: the bound of every integer query parameter stored as
# one (sequence numbers, sizes), so a larger one is a 400 naming it instead of a driver error.
BIGINT_MAX = 2**63 - 1


def encode_cursor(*key: Any) -> str:
    return base64.urlsafe_b64encode(msgspec.json.encode(list(key))).decode().rstrip("=")


def decode_cursor(cursor: str, types: tuple[type, ...]) -> tuple[Any, ...]:
    """Decode a cursor made by `encode_cursor`; a forged one is a 422 naming ``cursor``."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        values = msgspec.json.decode(raw, type=tuple[*types])  # type: ignore[valid-type]
    except (binascii.Error, ValueError, msgspec.DecodeError, msgspec.ValidationError) as error:
        raise InvalidInput(
            "the cursor is not one this API issued",
            errors=[FieldError(path="cursor", message="invalid cursor", source="query")],
        ) from error
    return tuple(values)


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput(
            f"limit must be between 1 and {MAX_PAGE}",
            errors=[FieldError(path="limit", message=f"must be 1..{MAX_PAGE}", source="query")],
        )
    return limit
