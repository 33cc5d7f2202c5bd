"""The gateway's view of grants, upstreams and revoked tokens: in memory, kept fresh three ways.

No request reads the database for a grant it has seen: a miss loads the grant once
(`GrantService.snapshot`), and from then on it changes by

1. ``dx.grant.*`` events on a core NATS subscription to ``<prefix>.grant.>``: the state,
   causes and term of the event replace the cached ones when its ``version`` is newer, within
   milliseconds of the outbox relay publishing it (a suspension reaches every gateway process
   well inside the 1 s the exchange promises); ``dx.grant.changed`` also reloads the grant and
   may carry a revoked token's ``jti``;
2. a re-check every `RECHECK_SECONDS` of every cached grant in one query (and of the upstreams,
   revoked tokens and delivery keys), which bounds staleness if events are lost;
3. the same re-check at once when the NATS connection comes back, since a core subscription
   misses what was published while it was away.

An event that arrives while its grant is loading is kept and applied after the load, so a load
that read the row just before a change cannot hide the change.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Final

import msgspec

from exchange.delivery.schemas import GrantSnapshot
from exchange.platform.events import GrantEvent, GrantEventData
from exchange.platform.logging import get_logger

log = get_logger(__name__)

RECHECK_SECONDS: Final = 2.0
IDLE_EVICT_SECONDS: Final = 600.0  # a grant unused this long leaves the cache (and re-checks)

SnapshotLoader = Callable[[uuid.UUID], Awaitable[GrantSnapshot | None]]
SnapshotsLoader = Callable[[Sequence[uuid.UUID]], Awaitable[list[GrantSnapshot]]]
_EVENT = msgspec.json.Decoder(GrantEvent)


class GrantCache:
    """Grants by id, their upstreams by product, and revoked jtis."""

    def __init__(
        self,
        load: SnapshotLoader,
        load_many: SnapshotsLoader,
        on_closed: Callable[[uuid.UUID], None] | None = None,
    ) -> None:
        self._load = load
        self._load_many = load_many
        self._on_closed = on_closed  # a grant stopped being active: its leases can go back
        self._grants: dict[uuid.UUID, GrantSnapshot] = {}
        self._used: dict[uuid.UUID, float] = {}
        self._loading: dict[uuid.UUID, asyncio.Future[GrantSnapshot | None]] = {}
        self._early: dict[uuid.UUID, GrantEventData] = {}  # events for grants being loaded
        self._reload: set[uuid.UUID] = set()
        self.events = 0  # applied (a figure for tests and the benchmark)

    async def get(self, grant_id: uuid.UUID) -> GrantSnapshot | None:
        grant = self._grants.get(grant_id)
        if grant is not None:
            self._used[grant_id] = time.monotonic()
            return grant
        pending = self._loading.get(grant_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[GrantSnapshot | None] = asyncio.get_running_loop().create_future()
        self._loading[grant_id] = future
        try:
            loaded = await self._load(grant_id)
            early = self._early.pop(grant_id, None)
            if loaded is not None:
                if early is not None:
                    loaded = _applied(loaded, early)
                self._grants[grant_id] = loaded
                self._used[grant_id] = time.monotonic()
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved: waiters (if any) get it from the shield
            raise
        finally:
            self._loading.pop(grant_id, None)
        future.set_result(loaded)
        return loaded

    def apply(self, data: GrantEventData, *, reload: bool = False) -> bool:
        """Apply one grant event; returns whether it changed what the cache holds."""
        grant_id = uuid.UUID(data.grant_id)
        cached = self._grants.get(grant_id)
        if cached is None:
            if grant_id in self._loading:
                early = self._early.get(grant_id)
                if early is None or early.version < data.version:
                    self._early[grant_id] = data
            return False
        if data.version <= cached.version:
            return False
        updated = _applied(cached, data)
        self._grants[grant_id] = updated
        self.events += 1
        if reload:
            self._reload.add(grant_id)
        if cached.state == "active" and updated.state != "active" and self._on_closed:
            self._on_closed(grant_id)
        return True

    def on_message(self, payload: bytes) -> str | None:
        """A ``dx.grant.*`` message; returns the revoked jti it carries, if any."""
        try:
            event = _EVENT.decode(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            log.warning("grant_event_unreadable", error=str(error))
            return None
        self.apply(event.data, reload=event.type == "dx.grant.changed")
        return event.data.revoked_jti

    async def recheck(self) -> int:
        """Re-read every cached grant (one query) and the ones events marked for reloading;
        drop grants unused for `IDLE_EVICT_SECONDS`. Returns how many changed."""
        now = time.monotonic()
        for grant_id, used in list(self._used.items()):
            if now - used > IDLE_EVICT_SECONDS:
                self._grants.pop(grant_id, None)
                self._used.pop(grant_id, None)
        ids = list(self._grants)
        self._reload.clear()
        if not ids:
            return 0
        fresh = {g.id: g for g in await self._load_many(ids)}
        changed = 0
        for grant_id in ids:
            cached, current = self._grants.get(grant_id), fresh.get(grant_id)
            if current is None:
                self._grants.pop(grant_id, None)
                changed += 1
            elif cached is None or (current.version >= cached.version and current != cached):
                self._grants[grant_id] = current
                changed += 1
                closed = cached is not None and cached.state == "active" != current.state
                if closed and self._on_closed is not None:
                    self._on_closed(grant_id)
        return changed

    @property
    def wants_reload(self) -> bool:
        return bool(self._reload)

    def grant_ids(self) -> list[uuid.UUID]:
        return list(self._grants)

    def product_ids(self) -> set[uuid.UUID]:
        return {g.product_id for g in self._grants.values()}


def _applied(grant: GrantSnapshot, data: GrantEventData) -> GrantSnapshot:
    if data.version <= grant.version:
        return grant
    return msgspec.structs.replace(
        grant,
        state=data.state,
        version=data.version,
        suspended_by=list(data.suspended_by),
        valid_until=datetime.fromisoformat(data.valid_until),
    )


class Upstreams:
    """Product id → upstream base URL, loaded on a miss (`GrantService.upstream`) and re-read
    with the grants."""

    def __init__(self, pool: Any, load: Callable[[uuid.UUID], Awaitable[str | None]]) -> None:
        self.pool = pool
        self._load = load
        self._base: dict[uuid.UUID, str | None] = {}

    async def base_url(self, product_id: uuid.UUID) -> str | None:
        if product_id not in self._base:
            self._base[product_id] = await self._load(product_id)
        return self._base[product_id]

    async def recheck(self, products: set[uuid.UUID]) -> None:
        rows = await self.pool.fetch(
            "SELECT product_id, base_url FROM delivery_upstreams WHERE product_id = ANY($1)",
            list(products),
        )
        self._base = dict.fromkeys(products) | {r["product_id"]: r["base_url"] for r in rows}
