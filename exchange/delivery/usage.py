"""Usage records: every served request or byte range, committed before the buyer gets it.

`UsageRecorder` is a group commit: callers hand it records and wait; one flush writes every
record waiting (one transaction, three statements) and tells each caller whether its record is
in. A record is refused — and its request must not be served — when a lease it names is closed
or expired: that is what makes the quota exact (`exchange.delivery.quota`). The usage id is the
primary key, so a retried flush never writes a record twice.

What a crash can do: a process killed after a record's commit and before the answer reached the
buyer leaves a record for an answer never delivered (at most the records of the flush in flight,
each one request or one chunk); a process killed before the commit leaves no record and served
nothing. So no served request is ever unrecorded, and none is recorded twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import datetime
from typing import Any, Final

import asyncpg
import msgspec

from exchange.platform.errors import DataexError
from exchange.platform.logging import get_logger

log = get_logger(__name__)

MAX_BATCH: Final = 1000
IN_FLIGHT: Final = 2


class UsageNotRecorded(DataexError):
    status = 503
    code = "usage_not_recorded"
    title = "The usage of this request could not be recorded, so it was not served; retry"


class UsageRecord(msgspec.Struct, frozen=True):
    id: uuid.UUID
    grant_id: uuid.UUID
    served_at: datetime
    units: dict[str, int]
    leases: list[uuid.UUID]
    cost_millifen: int
    detail: dict[str, Any]


# One statement (one round trip, no explicit transaction): the records' open leases are locked
# FOR SHARE, in id order, before the insert that needs them, so a lease being closed either
# waits for this insert (and counts it) or has closed first (and the record is refused).
_WRITE = """
WITH incoming AS MATERIALIZED (
    SELECT r.id, r.grant_id, r.served_at, r.units, r.cost, r.detail,
           ARRAY(SELECT jsonb_array_elements_text(r.leases::jsonb)::uuid) AS leases
      FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[], $4::text[], $5::text[],
                  $6::bigint[], $7::text[])
           AS r(id, grant_id, served_at, units, leases, cost, detail)
), open AS MATERIALIZED (
    SELECT id FROM quota_leases
     WHERE id IN (SELECT unnest(leases) FROM incoming) AND closed_at IS NULL
       AND expires_at > clock_timestamp()
     ORDER BY id FOR SHARE
), accepted AS MATERIALIZED (
    SELECT * FROM incoming WHERE leases <@ ARRAY(SELECT id FROM open)
), written AS (
    INSERT INTO usage_records (id, grant_id, served_at, units, leases, cost_millifen, detail)
    SELECT id, grant_id, served_at, units::jsonb, leases, cost, detail::jsonb FROM accepted
    ON CONFLICT (id) DO NOTHING
)
SELECT id FROM accepted
"""


async def write(conn: Any, records: list[UsageRecord]) -> set[uuid.UUID]:
    """Insert the records whose leases are all open; returns the ids written (or already
    there). One statement, so it needs no transaction of its own (or joins the caller's)."""
    encode = msgspec.json.encode
    rows = await conn.fetch(
        _WRITE,
        [r.id for r in records], [r.grant_id for r in records],
        [r.served_at for r in records], [encode(r.units).decode() for r in records],
        [encode([str(x) for x in r.leases]).decode() for r in records],
        [r.cost_millifen for r in records], [encode(r.detail).decode() for r in records],
    )  # fmt: skip
    return {row["id"] for row in rows}


class UsageRecorder:
    """Group commit of usage records for one process. Up to ``in_flight`` flushes run at once:
    a record that arrives while one commits starts the next instead of waiting for it (the
    commit's fsync is most of a record's latency)."""

    def __init__(
        self, pool: asyncpg.Pool, max_batch: int = MAX_BATCH, in_flight: int = IN_FLIGHT
    ) -> None:
        self.pool = pool
        self.max_batch = max_batch
        self.in_flight = in_flight
        self._waiting: list[tuple[UsageRecord, asyncio.Future[None]]] = []
        self._flushing: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.flushes = 0
        self.written = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="usage-recorder")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._flushing:
            await asyncio.wait(self._flushing)
        while self._waiting:
            await self._flush(self._take())

    async def record(self, record: UsageRecord) -> None:
        """Returns once the record is committed; raises `UsageNotRecorded` if it was refused."""
        self.start()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((record, future))
        self._wake.set()
        await future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._waiting:
                if len(self._flushing) >= self.in_flight:
                    await asyncio.wait(self._flushing, return_when=asyncio.FIRST_COMPLETED)
                    continue
                flush = asyncio.create_task(self._flush(self._take()))
                self._flushing.add(flush)
                flush.add_done_callback(self._flushing.discard)

    def _take(self) -> list[tuple[UsageRecord, asyncio.Future[None]]]:
        batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
        return batch

    async def _flush(self, batch: list[tuple[UsageRecord, asyncio.Future[None]]]) -> None:
        records = [r for r, _ in batch]
        try:
            async with self.pool.acquire() as conn:
                written = await write(conn, records)
        except BaseException as error:  # whatever failed (a stop too), nobody is served unrecorded
            log.warning("usage_flush_failed", error=str(error), records=len(records))
            for _, future in batch:
                if not future.done():
                    future.set_exception(
                        UsageNotRecorded(f"usage could not be written: {type(error).__name__}")
                    )
            if not isinstance(error, Exception):
                raise
            return
        self.flushes += 1
        self.written += len(written)
        for record, future in batch:
            if future.done():
                continue
            if record.id in written:
                future.set_result(None)
            else:
                future.set_exception(
                    UsageNotRecorded("a quota lease of this request closed before it was recorded")
                )
