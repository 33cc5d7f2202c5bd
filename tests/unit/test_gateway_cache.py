"""The gateway's grant cache: events apply in version order, an event that arrives while its
grant loads is not lost, a re-check never undoes a newer event, grants that stop being active
hand their leases back, and unreadable events change nothing."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import msgspec

from exchange.delivery.gateway.grants import GrantCache
from exchange.delivery.schemas import GrantSnapshot
from exchange.platform.events import GrantEvent, GrantEventData

UNTIL = datetime(2027, 1, 1, tzinfo=UTC)


def snapshot(grant_id: uuid.UUID, version: int = 1, state: str = "active") -> GrantSnapshot:
    return GrantSnapshot(
        id=grant_id, trade_id=uuid.uuid4(), mode="api", state=state, version=version,  # type: ignore[arg-type]
        buyer_org_id=uuid.uuid4(), buyer_uscc=None, seller_org_id=uuid.uuid4(),
        product_id=uuid.uuid4(), product_code="DX-2026-0001X", revision=1, dimensions=[],
        spend_cap_fen=None, valid_until=UNTIL, suspended_by=[],
    )  # fmt: skip


def event(grant_id: uuid.UUID, version: int, state: str = "suspended", **extra) -> GrantEventData:
    return GrantEventData(
        grant_id=str(grant_id), trade_id=str(uuid.uuid4()), mode="api", state=state,  # type: ignore[arg-type]
        version=version, buyer_org_id=str(uuid.uuid4()), seller_org_id=str(uuid.uuid4()),
        product_code="DX-2026-0001X", suspended_by=["exchange"] if state == "suspended" else [],
        valid_until=(UNTIL + timedelta(days=version)).isoformat(), **extra,
    )  # fmt: skip


async def cached(cache: GrantCache, grant_id: uuid.UUID) -> GrantSnapshot:
    grant = await cache.get(grant_id)
    assert grant is not None
    return grant


class Store:
    """The database as the cache sees it: rows by id, and how often it was read."""

    def __init__(self, *grants: GrantSnapshot) -> None:
        self.rows = {g.id: g for g in grants}
        self.reads = 0
        self.gate: asyncio.Event | None = None

    async def load(self, grant_id):
        self.reads += 1
        row = self.rows.get(grant_id)
        if self.gate is not None:
            await self.gate.wait()
        return row

    async def load_many(self, ids):
        return [self.rows[i] for i in ids if i in self.rows]


async def test_a_grant_is_read_once_and_events_apply_in_version_order():
    grant_id = uuid.uuid4()
    store = Store(snapshot(grant_id))
    closed: list[uuid.UUID] = []
    cache = GrantCache(store.load, store.load_many, on_closed=closed.append)
    assert (await cached(cache, grant_id)).state == "active"
    assert (await cached(cache, grant_id)).state == "active" and store.reads == 1
    assert cache.apply(event(grant_id, 3))
    assert not cache.apply(event(grant_id, 2, "active"))  # older: ignored
    grant = await cached(cache, grant_id)
    assert (grant.state, grant.version, grant.suspended_by) == ("suspended", 3, ["exchange"])
    assert grant.valid_until == UNTIL + timedelta(days=3)
    assert closed == [grant_id]  # active → suspended: its leases go back


async def test_an_event_during_the_first_load_is_applied_after_it():
    grant_id = uuid.uuid4()
    store = Store(snapshot(grant_id, version=1))
    store.gate = asyncio.Event()
    cache = GrantCache(store.load, store.load_many)
    first, second = (
        asyncio.create_task(cached(cache, grant_id)),
        asyncio.create_task(cached(cache, grant_id)),
    )
    await asyncio.sleep(0)
    cache.apply(event(grant_id, 2))  # the row was read before this change committed
    store.gate.set()
    assert [(g.state, g.version) for g in await asyncio.gather(first, second)] == [
        ("suspended", 2), ("suspended", 2)]  # fmt: skip
    assert store.reads == 1


async def test_a_recheck_takes_newer_rows_but_never_undoes_a_newer_event():
    a, b, gone = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    store = Store(snapshot(a), snapshot(b), snapshot(gone))
    cache = GrantCache(store.load, store.load_many)
    for grant_id in (a, b, gone):
        await cache.get(grant_id)
    cache.apply(event(a, 5))  # the event is ahead of what the re-check reads
    store.rows[b] = snapshot(b, version=4, state="revoked")  # an event lost on the way
    del store.rows[gone]
    assert await cache.recheck() == 2
    assert (await cached(cache, a)).version == 5
    assert (await cached(cache, b)).state == "revoked"
    assert gone not in cache.grant_ids()


async def test_messages_carry_revoked_jtis_and_changed_asks_for_a_reload():
    grant_id = uuid.uuid4()
    store = Store(snapshot(grant_id))
    cache = GrantCache(store.load, store.load_many)
    await cache.get(grant_id)
    message = GrantEvent(id="e1", source="urn:test", type="dx.grant.changed",
                         time=datetime.now(UTC),
                         data=event(grant_id, 2, "active", revoked_jti="j-1"))  # fmt: skip
    assert cache.on_message(msgspec.json.encode(message)) == "j-1"
    assert cache.wants_reload
    assert cache.on_message(b"{not json") is None
    assert (await cached(cache, grant_id)).version == 2
