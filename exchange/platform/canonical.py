"""Canonical JSON (RFC 8785) and digests over it: one way to hash a document everywhere.

RFC 8785 is sorted keys, no whitespace, minimal string escaping and ECMAScript number
formatting. For documents without floating-point numbers, with integers within ±2^53 and
without object keys outside the Basic Multilingual Plane, msgspec's sorted compact JSON is
byte-identical (property-tested against the `rfc8785` package) and about ten times faster; any
other document goes through `rfc8785` itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import msgspec
import rfc8785

_SORTED = msgspec.json.Encoder(order="sorted")
_SAFE_INT = 2**53


def _plain(value: Any) -> bool:
    """No float, no integer beyond ±2^53, no key outside the BMP (where orders differ)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                if not key.isascii() and any(ord(c) > 0xFFFF for c in key):
                    return False
                stack.append(child)
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, float):
            return False
        elif isinstance(item, int) and not -_SAFE_INT < item < _SAFE_INT:
            return False  # (bool is an int within range)
    return True


def canonical_json(document: Any) -> bytes:
    """RFC 8785 bytes of a msgspec struct or plain JSON value."""
    builtins = msgspec.to_builtins(document)
    if _plain(builtins):
        return _SORTED.encode(builtins)
    return bytes(rfc8785.dumps(builtins))


def canonical_lines(documents: Sequence[Any], *, parts: Sequence[Any] | None = None) -> bytes:
    """JSON lines: each document's RFC 8785 bytes and a newline, in the order given. One
    encoder call for the lot when every document is plain (a usage log of 10,000 records).

    ``parts``: when the caller knows its documents are plain but for these parts of them (rows
    whose typed columns are strings, UUIDs, times and integers within ±2^53, beside free-form
    JSON columns), only the parts are checked and the documents — structs too — are encoded as
    they are, with no copy into dicts first."""
    if parts is not None and _plain(list(parts)):
        return _SORTED.encode_lines(documents)
    builtins = msgspec.to_builtins(list(documents))
    if _plain(builtins):
        return _SORTED.encode_lines(builtins)
    return b"".join(bytes(rfc8785.dumps(document)) + b"\n" for document in builtins)


def sha256_digest(document: Any) -> str:
    """``sha256:<hex>`` over the canonical JSON of ``document``."""
    return "sha256:" + hashlib.sha256(canonical_json(document)).hexdigest()
