"""The evidence bundle (helper H3 writes this module; this is a PLACEHOLDER so the disputes
room's endpoint can be written against its signature — the lead takes H3's file at merge).

TEMPORARY until H3 merges: `BundleItem` as the design fixes it; `write_bundle` raises.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from exchange.platform.disputes import LedgerProofs


@dataclass(frozen=True, slots=True)
class BundleItem:
    index: int  # 0-based, the manifest order (= registration order)
    kind: str  # party types (statement, …) or system kinds (contract, usage, …)
    name: str
    media_type: str
    sha256: str  # hex
    size: int
    submitter: str  # "buyer" | "seller" | "exchange" | "staff"
    submitter_org_id: str | None
    submitted_at: str  # RFC 3339 UTC
    ledger_seq: int
    path: Path  # where the bytes are (not written to the manifest)


def write_bundle(
    out: BinaryIO,
    *,
    exchange: str,
    dispute: Mapping[str, Any],
    items: Sequence[BundleItem],
    proofs: LedgerProofs,
    sign: Callable[[bytes], str],
    exported_at: str,
) -> None:
    raise NotImplementedError("TEMPORARY: the evidence bundle is helper H3's (issue 21)")
