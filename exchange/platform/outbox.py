"""The transactional outbox: events are written with the state change, then relayed to JetStream.

A service calls `enqueue` inside its transaction. The relay claims unpublished rows with
``FOR UPDATE SKIP LOCKED`` (so several relays share the work and none publishes a row another
holds), publishes each with ``Nats-Msg-Id`` = event id (JetStream drops a re-publish inside the
duplicate window; consumers are idempotent beyond it), and marks the rows in the same
transaction. Rows are never read by ``id > last_seen``: transactions commit out of order.
LISTEN/NOTIFY only wakes the relay early; it polls every second regardless.

Each event carries the W3C ``traceparent`` of the span that wrote it (`exchange.platform.tracing`)
in its row, in the CloudEvent's ``traceparent`` extension attribute and in the message's
``traceparent`` header, so whoever handles it continues that trace.

Rows are kept after they are published. A room that must find again events it may have missed
(the settlement room's reconciler: an executed trade whose event never reached its consumer)
reads them with `published`, a page of one kind of event by when it was published, over a
partial index per kind (``0016``), and takes the ones it needs with `stored`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import msgspec

from exchange.platform import metrics
from exchange.platform.bus import stream_for
from exchange.platform.context import Platform
from exchange.platform.db import Connection, Executor, connect
from exchange.platform.logging import get_logger
from exchange.platform.rows import Row
from exchange.platform.tracing import current_traceparent, parse

log = get_logger(__name__)

CHANNEL = "dataex_outbox"
BATCH = 256
POLL_SECONDS = 1.0
COALESCE_SECONDS = 0.025


class CloudEvent(msgspec.Struct, frozen=True, kw_only=True):
    """CloudEvents 1.0 JSON envelope (structured mode)."""

    specversion: str = "1.0"
    id: str
    source: str
    type: str
    subject: str | None = None
    time: datetime
    datacontenttype: str = "application/json"
    dataschema: str | None = None
    dxrequestid: str | None = None  # extension attribute: the request that caused the event
    # extension attribute (CloudEvents distributed tracing): the W3C traceparent of the span
    # that wrote the event
    traceparent: str | None = None
    data: Any


class OutboxRow(Row, frozen=True):
    """One event waiting for the relay, for a statement that writes many."""

    __table__ = "outbox"
    id: uuid.UUID
    subject: str
    payload: bytes
    request_id: str | None
    created_at: datetime
    traceparent: str | None


def envelope(
    event_id: uuid.UUID,
    *,
    source: str,
    event_type: str,
    event_subject: str | None,
    data: Any,
    at: datetime,
    request_id: str | None,
    traceparent: str | None = None,
) -> bytes:
    """The outbox payload: the event in its CloudEvents envelope, as JSON."""
    return msgspec.json.encode(
        CloudEvent(
            id=str(event_id), source=source, type=event_type, subject=event_subject, time=at,
            dataschema=f"urn:dataex:schema:{event_type}", dxrequestid=request_id,
            traceparent=traceparent, data=data,
        )
    )  # fmt: skip


async def enqueue(
    conn: Connection,
    *,
    subject: str,
    event_type: str,
    source: str,
    data: Any,
    at: datetime,
    event_subject: str | None = None,
    request_id: str | None = None,
    traceparent: str | None = None,
) -> str:
    """Write an event in the caller's transaction; returns the event id. ``traceparent``:
    None for the current span's (the request or event being handled), if any."""
    event_id = uuid.uuid4()
    traceparent = traceparent or current_traceparent()
    payload = envelope(
        event_id, source=source, event_type=event_type, event_subject=event_subject, data=data,
        at=at, request_id=request_id, traceparent=traceparent,
    )  # fmt: skip
    await conn.execute(
        "INSERT INTO outbox (id, subject, payload, request_id, created_at, traceparent,"
        " event_subject) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        event_id, subject, payload, request_id, at, traceparent, event_subject,
    )  # fmt: skip
    return str(event_id)


async def enqueue_message(conn: Connection, *, subject: str, payload: bytes, at: datetime) -> str:
    """Write a message that is not an event (a job for the work queue) in the caller's
    transaction: the relay publishes it after the commit, its row id as ``Nats-Msg-Id``."""
    message_id = uuid.uuid4()
    await conn.execute(
        "INSERT INTO outbox (id, subject, payload, request_id, created_at)"
        " VALUES ($1, $2, $3, NULL, $4)",
        message_id, subject, payload, at,
    )  # fmt: skip
    return str(message_id)


async def enqueue_many(
    conn: Connection,
    events: list[tuple[str, str, str | None, Any]],
    *,
    source: str,
    at: datetime,
    request_id: str | None = None,
    traceparents: Sequence[str | None] | None = None,
) -> list[str]:
    """`enqueue` for many events in one statement: (subject, type, event subject, data) each.
    ``traceparents``: each event's (in the same order; a None in it, or None for all, is the
    current span's)."""
    if not events:
        return []
    ids = [uuid.uuid4() for _ in events]
    here = current_traceparent()
    traces = [t or here for t in traceparents] if traceparents is not None else [here] * len(ids)
    payloads = [
        envelope(
            event_id, source=source, event_type=event_type, event_subject=event_subject,
            data=data, at=at, request_id=request_id, traceparent=trace,
        )
        for event_id, (_subject, event_type, event_subject, data), trace
        in zip(ids, events, traces, strict=True)
    ]  # fmt: skip
    await conn.execute(
        "INSERT INTO outbox (id, subject, payload, request_id, created_at, traceparent,"
        " event_subject) SELECT i, s, p, $4, $5, t, e FROM unnest($1::uuid[], $2::text[],"
        " $3::bytea[], $6::text[], $7::text[]) AS x(i, s, p, t, e)",
        ids, [e[0] for e in events], payloads, request_id, at, traces, [e[2] for e in events],
    )  # fmt: skip
    return [str(i) for i in ids]


# The kinds of event indexed by when they were published, with the partial index's predicate
# word for word (the planner uses a partial index only for a query that states its predicate).
PUBLISHED_INDEXES = {"trade.executed": "subject LIKE '%.trade.executed'"}
_NIL = uuid.UUID(int=0)


class PublishedEvent(msgspec.Struct, frozen=True):
    id: uuid.UUID  # the CloudEvent id, the first publication's Nats-Msg-Id
    event_subject: str | None  # the CloudEvent's subject: what it is about (a trade's id)
    published_at: datetime


class StoredEvent(msgspec.Struct, frozen=True):
    id: uuid.UUID
    subject: str  # the NATS subject it was published on
    payload: bytes  # the CloudEvent, as published
    request_id: str | None


def published_sql(kind: str, *, exact_subject: bool) -> str:
    """The statement behind `published` (its parameters: after, after id, before, limit, and
    with ``exact_subject`` the subject)."""
    predicate = PUBLISHED_INDEXES[kind]
    return (
        "SELECT id, event_subject,"
        f" published_at FROM outbox WHERE {predicate}"
        + (" AND subject = $5" if exact_subject else "")
        + " AND (published_at, id) > ($1, $2) AND published_at < $3"
        " ORDER BY published_at, id LIMIT $4"
    )


async def published(
    conn: Executor,
    kind: str,
    *,
    before: datetime,
    after: tuple[datetime, uuid.UUID | None] | None = None,
    subject: str | None = None,
    limit: int = 1000,
) -> list[PublishedEvent]:
    """A page of the events of ``kind`` (a key of `PUBLISHED_INDEXES`, e.g. "trade.executed")
    published before ``before``, from just past ``after`` ((published_at, id) of the last one
    read; None: from the first), in that order. ``subject``: only those on this NATS subject
    (the exchange's own prefix); None: any prefix. An index range scan, whatever the table's
    size."""
    since, since_id = after if after is not None else (datetime.min.replace(tzinfo=UTC), None)
    args: list[Any] = [since, since_id or _NIL, before, limit]
    if subject is not None:
        args.append(subject)
    rows = await conn.fetch(published_sql(kind, exact_subject=subject is not None), *args)
    return [PublishedEvent(r["id"], r["event_subject"], r["published_at"]) for r in rows]


async def stored(conn: Executor, ids: list[uuid.UUID]) -> list[StoredEvent]:
    """The events with these ids, as they were published (by primary key)."""
    rows = await conn.fetch(
        "SELECT id, subject, payload, request_id FROM outbox WHERE id = ANY($1::uuid[])", ids
    )
    return [StoredEvent(r["id"], r["subject"], bytes(r["payload"]), r["request_id"]) for r in rows]


async def about(conn: Executor, aggregate: str, event_subjects: Sequence[str]) -> list[StoredEvent]:
    """Every event of one kind of aggregate (NATS subjects ``<prefix>.<aggregate>.<event>``)
    whose CloudEvent subject is one of ``event_subjects``: an aggregate's history, as published
    (a dispute's evidence of a trade's grants), through the index of event subjects."""
    rows = await conn.fetch(
        "SELECT id, subject, payload, request_id FROM outbox"
        " WHERE event_subject = ANY($2::text[]) AND subject LIKE $1"
        " ORDER BY created_at, id",
        f"%.{aggregate}.%", list(event_subjects),
    )  # fmt: skip
    return [StoredEvent(r["id"], r["subject"], bytes(r["payload"]), r["request_id"]) for r in rows]


async def backlog(conn: Executor) -> tuple[int, float]:
    """Events not published yet, and how many seconds the oldest of them has waited (0: none).
    Over the partial index of pending rows, so as cheap as the backlog is small."""
    row = await conn.fetchrow(
        "SELECT count(*) AS pending,"
        " coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest"
        " FROM outbox WHERE published_at IS NULL"
    )
    assert row is not None
    return int(row["pending"]), max(0.0, float(row["oldest"]))


async def relay_batch(platform: Platform, limit: int = BATCH) -> int:
    """Publish up to ``limit`` pending events; returns how many were published."""
    js = platform.nats.jetstream()
    async with platform.pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "SELECT id, subject, payload, request_id, created_at, traceparent FROM outbox"
            " WHERE published_at IS NULL ORDER BY created_at, id LIMIT $1 FOR UPDATE SKIP LOCKED",
            limit,
        )
        if not rows:
            return 0

        async def publish(row: Any) -> None:
            headers = {"Nats-Msg-Id": str(row["id"])}
            if row["request_id"]:
                headers["X-Request-ID"] = row["request_id"]
            if row["traceparent"]:
                headers["traceparent"] = row["traceparent"]
            await js.publish(
                row["subject"],
                bytes(row["payload"]),
                headers=headers,
                stream=stream_for(platform.settings, row["subject"]),
            )

        await asyncio.gather(*(publish(row) for row in rows))
        await conn.execute(
            "UPDATE outbox SET published_at = now() WHERE id = ANY($1::uuid[])",
            [row["id"] for row in rows],
        )
    _published(rows)
    return len(rows)


def _published(rows: Sequence[Any]) -> None:
    """Count what a round published and how long each waited; one debug line per event, with
    its trace (`DATAEX_LOG_LEVEL=debug` to follow an event through the relay)."""
    now = datetime.now(UTC)
    metrics.OUTBOX_PUBLISHED.inc(len(rows))
    for row in rows:
        metrics.OUTBOX_PUBLISH_LAG.observe(max(0.0, (now - row["created_at"]).total_seconds()))
    if log.is_enabled_for(logging.DEBUG):
        for row in rows:
            trace = parse(row["traceparent"])
            log.debug(
                "event_published", event_id=str(row["id"]), subject=row["subject"],
                trace_id=trace.trace_id if trace else None,
            )  # fmt: skip


async def relay_loop(platform: Platform, stop: asyncio.Event) -> None:
    """Relay until ``stop`` is set: woken by NOTIFY, polling every second as the fallback."""
    wake = asyncio.Event()

    def on_notify(*_args: object) -> None:
        wake.set()

    listener: asyncpg.Connection | None = None
    try:
        while not stop.is_set():
            if listener is None or listener.is_closed():
                # The listening connection dies with a database restart (and asyncpg's pool
                # would take a borrowed one back on close): listen on a connection of its own,
                # again once the database answers; until then polling carries on alone.
                listener = await _listen(platform, on_notify)
            try:
                published = await relay_batch(platform)
            except Exception as error:  # noqa: BLE001 - keep relaying; the rows stay pending
                log.warning("relay_failed", error=f"{type(error).__name__}: {error}")
                published = 0
            if published == BATCH:
                continue
            wake.clear()
            waiters = {asyncio.ensure_future(wake.wait()), asyncio.ensure_future(stop.wait())}
            _done, pending = await asyncio.wait(
                waiters, timeout=POLL_SECONDS, return_when=asyncio.FIRST_COMPLETED
            )
            for task in pending:
                task.cancel()
            if wake.is_set() and not stop.is_set():
                # Woken by a commit: let the commits of concurrent requests land too, so one
                # claim-publish-mark round serves many events instead of one each.
                await asyncio.sleep(COALESCE_SECONDS)
    finally:
        if listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.close(), timeout=1.0)


async def _listen(platform: Platform, on_notify: Any) -> asyncpg.Connection | None:
    """A connection LISTENing on the outbox channel, or None while the database is away."""
    assert platform.settings.database_url
    try:
        conn = await asyncio.wait_for(connect(platform.settings.database_url), timeout=5.0)
    except Exception as error:  # noqa: BLE001 - tried again next round
        log.warning("relay_listen_failed", error=f"{type(error).__name__}: {error}")
        return None
    try:
        await conn.add_listener(CHANNEL, on_notify)
    except Exception as error:  # noqa: BLE001 - tried again next round
        log.warning("relay_listen_failed", error=f"{type(error).__name__}: {error}")
        conn.terminate()
        return None
    return conn
