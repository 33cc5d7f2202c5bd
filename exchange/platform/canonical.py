"""Canonical JSON (RFC 8785) and digests over it: one way to hash a document everywhere."""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec
import rfc8785


def canonical_json(document: Any) -> bytes:
    """RFC 8785 bytes of a msgspec struct or plain JSON value."""
    return bytes(rfc8785.dumps(msgspec.to_builtins(document)))


def sha256_digest(document: Any) -> str:
    """``sha256:<hex>`` over the canonical JSON of ``document``."""
    return "sha256:" + hashlib.sha256(canonical_json(document)).hexdigest()
