"""No executed trade left behind: the reconciler each settlement worker runs beside its consumer.

The worker hears of executed trades only through its durable JetStream consumer. A message that
another client pulls and acknowledges from that consumer (a stray script, a tool pointed at the
wrong durable), or that is lost any other way, would leave its trade executed and never settled,
and nothing else would notice. The reconciler finds such trades and has them settled:

- **Found** from the dx.trade.executed events the outbox keeps (`exchange.platform.outbox`,
  `published`: a page of one kind of event by when it was published, over a partial index), read
  from where the last round stopped up to ``DATAEX_RECONCILE_AFTER_SECONDS`` (the bound) ago and
  anti-joined against the room's own ``settlement_trades``. One executed event is one trade
  (`TradeExecutedData`), named by the event's subject. A trade has its settlement outcome as
  soon as it has a row there, whatever its state: reserved (a metered trade stays reserved for
  as long as its grant runs), failed (unfunded), disputed, settled or voided. A trade the
  consumer dead-lettered is in staff's hands already (``GET /v1/settlement/failures``) and is
  not republished; `dataex ledger verify` names it all the same.
- **Republished** a round after it was found (the consumer may have had it in hand, its batch
  not yet committed), with a new message id, ``<event id>:reconcile:<attempt>``, on the subject it
  was first published on: under the original id JetStream would drop it inside the stream's
  two-minute duplicate window. The consumer is idempotent on the trade, so a trade that was
  settled meanwhile changes nothing. Each found trade waits in ``settlement_overdue`` until it
  has an outcome, and is republished at most once per bound.
- **Counted**: ``settlement_reconciler.republished_total``, and the trades overdue now (both on
  ``/health/ready``, through `report`); each republish also logs ``trades_republished`` with the
  count and the trade ids.

A round reads only what it has not read: ``checked_until`` moves up to the bound's edge, and
the next round starts ``LATE_MARGIN_SECONDS`` before it (a relay stamps ``published_at`` as its
transaction starts and commits a moment later). When nothing is missing a round is one index
range scan over the events published since the last round and a primary-key probe per trade.
While the consumer still has executed events it has not handed out (a backlog after an outage),
their trades are not lost but waiting: the round neither looks nor republishes until it has
caught up. Several workers run a reconciler each; one acts at a time (a transaction-scoped
advisory lock, tried, never waited for).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from exchange.platform import outbox
from exchange.platform.context import Platform
from exchange.platform.db import Connection, Executor
from exchange.platform.logging import get_logger
from exchange.platform.status import SettlementStatus
from settlement.consumer import backlog

log = get_logger(__name__)

LOCK = "dataex.settlement.reconciler"
EXECUTED = "trade.executed"  # the kind of event in `outbox.PUBLISHED_INDEXES`
PAGE = 5_000  # executed events read per transaction
REPUBLISH_BATCH = 500  # trades republished per transaction
LATE_MARGIN_SECONDS = 10.0  # read again before checked_until: relay transactions commit late


def round_seconds(bound: float) -> float:
    """How often a reconciler looks: a quarter of the bound, between 0.25 and 10 seconds."""
    return min(max(bound / 4, 0.25), 10.0)


@dataclass
class Round:
    """What one round did. ``acted`` is False when another worker's reconciler held the lock or
    the consumer had a backlog."""

    acted: bool = False
    scanned: int = 0  # executed events read
    found: int = 0  # trades newly found overdue
    republished: list[str] = field(default_factory=list)  # trade ids
    resolved: int = 0  # overdue trades that have an outcome now


class Reconciler:
    def __init__(
        self,
        platform: Platform,
        *,
        after_seconds: float | None = None,
        late_margin: float = LATE_MARGIN_SECONDS,
        grace: float | None = None,
        consumer_backlog: Callable[[], Awaitable[int | None]] | None = None,
    ) -> None:
        self.platform = platform
        settings = platform.settings
        self.after = float(
            settings.reconcile_after_seconds if after_seconds is None else after_seconds
        )
        self.late_margin = late_margin
        # A trade is republished only once it was still missing a round after it was found: the
        # consumer may have had it in hand, its batch not yet committed.
        self.grace = round_seconds(self.after) if grace is None else grace
        self.subject = settings.subject("trade", "executed")
        self.consumer_backlog = consumer_backlog or (lambda: backlog(platform))

    async def run_once(self) -> Round:
        result = Round()
        async with self.platform.pool.acquire() as conn:
            result.resolved = await _resolve(conn)
        waiting = await self.consumer_backlog()
        if waiting is None or waiting > 0:
            return result  # no consumer yet, or executed events still queued in it
        scanned = await self._scan(result)
        if scanned:
            await self._republish(result)
        return result

    async def _scan(self, result: Round) -> bool:
        """Record the trades published before the bound's edge with no outcome; False if
        another reconciler holds the lock."""
        cursor: tuple[datetime, uuid.UUID | None] | None = None
        cutoff: datetime | None = None
        while True:
            async with self.platform.pool.acquire() as conn, conn.transaction():
                if not await _lock(conn):
                    return False
                state = await _state(conn, self.after)
                if cutoff is None:
                    cutoff = state["cutoff"]
                    if state["checked_until"] is not None:
                        start = state["checked_until"] - timedelta(seconds=self.late_margin)
                        cursor = (start, None)
                assert cutoff is not None
                page = await outbox.published(
                    conn, EXECUTED, subject=self.subject, after=cursor, before=cutoff, limit=PAGE
                )
                result.found += await _record(conn, page)
                done = len(page) < PAGE
                await conn.execute(
                    "UPDATE settlement_reconciler SET ran_at = now(),"
                    " checked_until = greatest(coalesce(checked_until, $1), $1)",
                    cutoff if done else page[-1].published_at,
                )
            result.scanned += len(page)
            result.acted = True
            if done:
                return True
            cursor = (page[-1].published_at, page[-1].id)

    async def _republish(self, result: Round) -> None:
        """Publish again the executed event of each overdue trade not republished within the
        bound, under a new message id."""
        settings = self.platform.settings
        js = self.platform.nats.jetstream()
        while True:
            async with self.platform.pool.acquire() as conn, conn.transaction():
                if not await _lock(conn):
                    return
                due = await conn.fetch(
                    "SELECT trade_id, event_id, attempts FROM settlement_overdue"
                    " WHERE found_at <= now() - make_interval(secs => $3)"
                    " AND (republished_at IS NULL"
                    " OR republished_at <= now() - make_interval(secs => $1))"
                    " ORDER BY published_at, trade_id LIMIT $2",
                    self.after, REPUBLISH_BATCH, self.grace,
                )  # fmt: skip
                if not due:
                    return
                events = {e.id: e for e in await outbox.stored(conn, [r["event_id"] for r in due])}
                sent = [r for r in due if r["event_id"] in events]
                gone = [r["trade_id"] for r in due if r["event_id"] not in events]
                if gone:  # outbox rows are kept, so not expected; `ledger verify` names them
                    log.error(
                        "settlement_reconcile_event_missing", trade_ids=[str(t) for t in gone]
                    )
                    await conn.execute(
                        "DELETE FROM settlement_overdue WHERE trade_id = ANY($1::uuid[])", gone
                    )
                await asyncio.gather(*(
                    _publish(js, events[row["event_id"]], row["attempts"] + 1,
                             settings.stream_name)
                    for row in sent
                ))  # fmt: skip
                trade_ids = [row["trade_id"] for row in sent]
                await conn.execute(
                    "UPDATE settlement_overdue SET republished_at = now(), attempts = attempts + 1"
                    " WHERE trade_id = ANY($1::uuid[])",
                    trade_ids,
                )
                await conn.execute(
                    "UPDATE settlement_reconciler SET republished_total = republished_total + $1",
                    len(trade_ids),
                )
            if trade_ids:
                result.republished += [str(t) for t in trade_ids]
                log.warning("trades_republished", count=len(trade_ids),
                            trade_ids=[str(t) for t in trade_ids],
                            after_seconds=self.after)  # fmt: skip
            if len(due) < REPUBLISH_BATCH:
                return


async def _publish(js: Any, event: outbox.StoredEvent, attempt: int, stream: str) -> None:
    """The event again, on its subject, under a message id JetStream has not seen."""
    headers = {"Nats-Msg-Id": f"{event.id}:reconcile:{attempt}", "Dataex-Republished": str(attempt)}
    if event.request_id:
        headers["X-Request-ID"] = event.request_id
    await js.publish(event.subject, event.payload, headers=headers, stream=stream)


async def _lock(conn: Connection) -> bool:
    """The reconciler's lock for this transaction, if no other reconciler holds it."""
    return bool(await conn.fetchval("SELECT pg_try_advisory_xact_lock(hashtext($1))", LOCK))


async def _state(conn: Connection, after: float) -> Any:
    """The reconciler's row (made on first use) and the bound's edge by the database's clock,
    the clock that stamped ``published_at``."""
    await conn.execute(
        "INSERT INTO settlement_reconciler (id) VALUES (true) ON CONFLICT (id) DO NOTHING"
    )
    return await conn.fetchrow(
        "SELECT checked_until, now() - make_interval(secs => $1) AS cutoff"
        " FROM settlement_reconciler",
        after,
    )


async def _record(conn: Connection, page: list[outbox.PublishedEvent]) -> int:
    """Record the trades of ``page`` that have no settlement outcome (and were not
    dead-lettered) as overdue; returns how many were new."""
    trades: dict[uuid.UUID, outbox.PublishedEvent] = {}
    for event in page:
        try:
            trades.setdefault(uuid.UUID(event.event_subject or ""), event)
        except ValueError:
            log.warning("settlement_reconcile_unreadable", event_id=str(event.id),
                        event_subject=event.event_subject)  # fmt: skip
    if not trades:
        return 0
    missing = [
        row["trade_id"]
        for row in await conn.fetch(
            "SELECT x.trade_id FROM unnest($1::uuid[]) AS x(trade_id) WHERE NOT EXISTS"
            " (SELECT 1 FROM settlement_trades s WHERE s.trade_id = x.trade_id)",
            list(trades),
        )
    ]
    if not missing:
        return 0
    dead = {
        row["trade_id"]
        for row in await conn.fetch(
            "SELECT DISTINCT trade_id FROM settlement_failures WHERE trade_id = ANY($1::uuid[])",
            missing,
        )
    }
    missing = [t for t in missing if t not in dead]
    if not missing:
        return 0
    inserted = await conn.fetchval(
        "WITH i AS (INSERT INTO settlement_overdue (trade_id, event_id, published_at, found_at)"
        " SELECT t, e, p, now() FROM unnest($1::uuid[], $2::uuid[], $3::timestamptz[])"
        " AS x(t, e, p) ON CONFLICT (trade_id) DO NOTHING RETURNING 1)"
        " SELECT count(*) FROM i",
        missing, [trades[t].id for t in missing], [trades[t].published_at for t in missing],
    )  # fmt: skip
    return int(inserted)


async def _resolve(conn: Connection) -> int:
    """Forget the overdue trades that have an outcome now, or were dead-lettered."""
    rows = await conn.fetch(
        "DELETE FROM settlement_overdue o"
        " WHERE EXISTS (SELECT 1 FROM settlement_trades s WHERE s.trade_id = o.trade_id)"
        " OR EXISTS (SELECT 1 FROM settlement_failures f WHERE f.trade_id = o.trade_id)"
        " RETURNING trade_id, attempts"
    )
    if rows:
        log.info("overdue_trades_resolved", count=len(rows),
                 republished=sum(1 for r in rows if r["attempts"]))  # fmt: skip
    return len(rows)


async def status(executor: Executor) -> SettlementStatus:
    """The figures ``/health/ready`` shows: trades overdue now (found past the bound and still
    without an outcome), executed events republished in all, and up to when events were read."""
    row = await executor.fetchrow(
        "SELECT (SELECT count(*) FROM settlement_overdue o WHERE NOT EXISTS"
        " (SELECT 1 FROM settlement_trades s WHERE s.trade_id = o.trade_id)) AS overdue,"
        " r.republished_total, r.checked_until"
        " FROM (SELECT 1) AS one LEFT JOIN settlement_reconciler r ON true"
    )
    assert row is not None
    return SettlementStatus(
        overdue=int(row["overdue"]),
        republished_total=int(row["republished_total"] or 0),
        checked_until=row["checked_until"],
    )


async def report(platform: Platform) -> SettlementStatus:
    """`status` for `exchange.platform.status`: the composition root provides it to health."""
    return await status(platform.pool)


async def reconcile_loop(platform: Platform, stop: asyncio.Event) -> None:
    """A round every `round_seconds` of the bound until ``stop``."""
    reconciler = Reconciler(platform)
    pause = round_seconds(reconciler.after)
    while not stop.is_set():
        try:
            await reconciler.run_once()
        except Exception as error:  # noqa: BLE001 - the database or NATS away: next round
            log.warning("settlement_reconcile_failed", error=f"{type(error).__name__}: {error}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=pause)
