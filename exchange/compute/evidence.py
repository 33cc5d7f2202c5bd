"""What the compute room attaches to a dispute over a trade: the receipts of its jobs.

``job-receipts.json`` (canonical JSON, RFC 8785) lists, oldest first, each ended job of the
trade's grants with its signed receipt exactly as ``GET /v1/jobs/{id}/receipt`` serves it
(``{receipt, digest, jws, ledger_seq}``: `exchange.compute.receipts.verify` checks one offline).
The compute room does not know trades, only grants: the composition root hands it the trade's
grant ids (the delivery room's `trade_grant_ids`). No ended job, no item.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Final

import msgspec

from exchange.platform.canonical import canonical_json
from exchange.platform.db import Executor
from exchange.platform.disputes import SystemEvidence

JOBS_TYPE: Final = "dataex.evidence.job-receipts.v1"


async def job_evidence(
    conn: Executor, trade_id: uuid.UUID, grant_ids: Sequence[uuid.UUID]
) -> list[SystemEvidence]:
    """``job-receipts.json`` of the jobs run under ``grant_ids`` (the trade's grants) that have
    ended; an empty list when none has."""
    rows = await conn.fetch(
        "SELECT id, grant_id, state, receipt FROM compute_jobs"
        " WHERE grant_id = ANY($1::uuid[]) AND receipt IS NOT NULL ORDER BY queued_at, id",
        list(grant_ids),
    )
    if not rows:
        return []
    jobs = [
        {"job_id": row["id"], "grant_id": row["grant_id"], "state": row["state"],
         "receipt": _decoded(row["receipt"])}
        for row in rows
    ]  # fmt: skip
    document = {"type": JOBS_TYPE, "trade_id": trade_id, "jobs": jobs}
    return [
        SystemEvidence("job_receipts", "job-receipts.json", "application/json",
                       canonical_json(document))
    ]  # fmt: skip


def _decoded(raw: object) -> object:
    return msgspec.json.decode(raw) if isinstance(raw, (str, bytes)) else raw
