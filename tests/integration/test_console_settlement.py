"""The console's settlement page over HTTP: dead letters as ``/v1/settlement/failures`` lists
them (keyset-paged), the latest signed tree head as ``/v1/ledger/tree-heads/latest`` gives it,
and the verifier `dataex ledger verify` runs: passing, naming a tampered entry, bounded in time,
one at a time, and refused without the form's CSRF token."""

from __future__ import annotations

import asyncio
import re

import msgspec

from exchange.console import settlement as settlement_page
from exchange.platform.clock import OffsetClock
from exchange.runtime import ensure_signing_key
from tests.kit.api import bearer
from tests.kit.console import csrf_of, hidden_fields, sign_in
from tests.kit.settlement import publish_executed, seed_parties, seed_trades, worker

ROW = re.compile(r'<tr data-failure="(?P<id>\d+)" data-trade="(?P<trade>[^"]*)">')


async def settled_trades(settings, pool, clock, n=6):
    """``n`` executed trades reserved by the worker and a signed tree head over them."""
    await ensure_signing_key(pool, settings)
    async with pool.acquire() as conn:
        seller, buyers, product = await seed_parties(conn, 2)
        events = await seed_trades(conn, n, seller, buyers, product)
    await publish_executed(settings, events)
    async with worker(settings, pool, clock) as w:
        assert await w.drain() == n
        await w.service.sign_tree_head()
    return events


async def verify(client):
    csrf = await csrf_of(client, "/console/settlement/")
    return await client.post("/console/settlement/verify", data={"_csrf": csrf})


async def test_the_page_shows_the_latest_signed_tree_head(client, market, settings, pool, clock):
    await settled_trades(settings, pool, clock)
    latest = (await client.get("/v1/ledger/tree-heads/latest")).json()
    await sign_in(client, market["alice"])
    page = await client.get("/console/settlement/")
    assert page.status_code == 200, page.text
    assert (
        f'id="latest-head" data-size="{latest["tree_size"]}" data-root="{latest["root_hash"]}"'
        in page.text
    )
    assert latest["jws"] in page.text
    assert "最新签名树头" in page.text
    assert 'data-entries="6"' in page.text  # the ledger's size, for the time it will take


async def test_the_verifier_passes_on_a_sound_ledger(client, market, settings, pool, clock):
    await settled_trades(settings, pool, clock)
    await sign_in(client, market["alice"])
    result = await verify(client)
    assert result.status_code == 200, result.text
    assert 'data-ok="true" data-finished="true" data-entries="6" data-problems="0"' in result.text
    assert "账本校验通过" in result.text


async def test_the_verifier_names_the_entry_that_was_altered(client, market, settings, pool, clock):
    await settled_trades(settings, pool, clock)
    async with pool.acquire() as conn:  # what a superuser could do, bypassing the triggers
        await conn.execute("SET session_replication_role = replica")
        await conn.execute(
            "UPDATE ledger_entries SET entry = convert_to(replace(convert_from(entry, 'UTF8'),"
            " '\"price_fen\":10000', '\"price_fen\":1'), 'UTF8') WHERE seq = 3"
        )
        await conn.execute("SET session_replication_role = origin")
    await sign_in(client, market["alice"])
    result = await verify(client)
    assert result.status_code == 200, result.text
    assert 'data-ok="false" data-finished="true" data-entries="6"' in result.text
    assert '<li data-seq="3">' in result.text
    assert "entry 3 was altered" in result.text


async def test_a_verification_stopped_at_the_limit_says_how_far_it_got(
    client, market, settings, pool, clock, monkeypatch
):
    await settled_trades(settings, pool, clock)
    monkeypatch.setattr(settlement_page, "VERIFY_LIMIT_SECONDS", 0.0)
    await sign_in(client, market["alice"])
    result = await verify(client)
    assert result.status_code == 200, result.text
    assert 'data-ok="false" data-finished="false"' in result.text
    assert "dataex ledger verify" in result.text


async def test_one_verification_at_a_time(client, market):
    await sign_in(client, market["alice"])
    csrf = await csrf_of(client, "/console/settlement/")
    platform = client.app.state.platform
    lock = platform.shared.setdefault("console.ledger_verification", asyncio.Lock())
    async with lock:
        busy = await client.post("/console/settlement/verify", data={"_csrf": csrf})
    assert busy.status_code == 409
    assert "already running" in busy.text
    assert 'id="verification"' not in busy.text


async def test_the_verifier_needs_the_forms_csrf_token(client, market):
    await sign_in(client, market["alice"])
    refused = await client.post("/console/settlement/verify", data={})
    assert refused.status_code == 403
    assert "CSRF" in refused.text
    assert 'id="verification"' not in refused.text


async def test_dead_letters_are_listed_as_the_api_lists_them_fifty_a_page(
    client, market, settings, pool, admin_token
):
    async with pool.acquire() as conn:
        seller, buyers, product = await seed_parties(conn, 1)
        events = await seed_trades(conn, 1, seller, buyers, product)
    forged = msgspec.structs.replace(events[0], price_fen=1)
    await publish_executed(settings, [forged])
    await sign_in(client, market["alice"])
    async with worker(settings, pool, OffsetClock()) as w:
        js = w.platform.nats.jetstream()

        async def undecodable(n):
            for _ in range(n):
                await js.publish(
                    settings.subject("trade", "executed"), b"{not json",
                    stream=settings.stream_name,
                )  # fmt: skip
            return await w.drain()

        assert await undecodable(49) == 50
        exactly_a_page = await client.get("/console/settlement/")
        assert len(ROW.findall(exactly_a_page.text)) == 50
        assert 'rel="next"' not in exactly_a_page.text  # no next page to link to
        assert await undecodable(1) == 1
    api = await client.get(
        "/v1/settlement/failures", params={"limit": 200}, headers=bearer(admin_token)
    )
    expected = [str(f["id"]) for f in api.json()]
    assert len(expected) == 51

    first = await client.get("/console/settlement/")
    assert first.status_code == 200, first.text
    assert 'id="dead-total">51<' in first.text
    assert 'id="dead-unsettled">1<' in first.text  # the forged trade has no outcome
    rows = [m["id"] for m in ROW.finditer(first.text)]
    assert rows == expected[:50]
    assert f'data-trade="{events[0].trade_id}"' in first.text
    assert "price_fen 1 differs from the contract" in first.text
    next_link = re.search(r'<a href="([^"]+)" rel="next">', first.text)
    assert next_link is not None
    second = await client.get(next_link.group(1).replace("&amp;", "&"))
    assert [m["id"] for m in ROW.finditer(second.text)] == expected[50:]
    assert 'rel="next"' not in second.text


async def test_the_page_reads_in_english(client, market):
    await sign_in(client, market["alice"])
    await client.get("/console/language", params={"to": "en", "next": "/console/settlement/"})
    page = await client.get("/console/settlement/")
    assert (
        "Latest signed tree head" in page.text and "No tree head has been signed yet." in page.text
    )
    assert "No dead letters." in page.text
    assert hidden_fields(page.text)["_csrf"]
