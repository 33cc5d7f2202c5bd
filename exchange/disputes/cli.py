"""``dataex dispute verify-bundle``: check an evidence bundle with only the exchange's JWKS.

Exit status: 0 verified, 1 a problem found (the first, named: an item by its index and name,
or the manifest, the tree head, ledger.json), 2 unreadable input. The JWKS loader is handed in
by the CLI (the one `dataex ledger verify-receipt` uses): this room does not import settlement.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from exchange.disputes.bundle import BundleInvalid, verify_bundle


def verify_bundle_file(
    path: Path, jwks_source: str, out: IO[str], load_jwks: Callable[[str], dict[str, Any]]
) -> int:
    try:
        keys = load_jwks(jwks_source)
    except (OSError, ValueError) as error:
        out.write(f"cannot read the JWKS: {error}\n")
        return 2
    try:
        verified = verify_bundle(path, keys)
    except BundleInvalid as error:
        out.write(f"bundle NOT verified: {error}\n")
        return 1
    except OSError as error:
        out.write(f"cannot read: {error}\n")
        return 2
    out.write(
        f"ok: the bundle of dispute {verified.dispute_id} verifies: {verified.items} items,"
        f" tree of size {verified.tree_size} signed at {verified.signed_at}\n"
    )
    return 0
