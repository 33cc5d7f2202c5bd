"""The console's audit search over HTTP: admins only (as ``GET /v1/audit``), every filter,
newest first in keyset pages of 50, and each entry's detail shown compactly."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from exchange.platform.audit import Actor, record
from tests.kit.api import bearer
from tests.kit.console import sign_in

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
ORG = uuid.UUID("00000000-0000-4000-8000-00000000a0d1")


@pytest.fixture
async def trail(pool) -> list[int]:
    """55 probe entries a minute apart from T0 (the 10th by another organisation, the last
    with a nested detail), written as every room writes its entries; their ids, oldest first."""
    async with pool.acquire() as conn, conn.transaction():
        for n in range(55):
            actor = Actor(label=f"cli:probe-{n}", org_id=ORG if n == 9 else None)
            await record(
                conn, actor, at=T0 + timedelta(minutes=n), action="probe.pinged",
                subject_type="probe", subject_id=f"p{n % 5}",
                detail={"n": n, "reason": "核查 <b>样本</b>"}
                | ({"nested": {"rules": ["NEG-06"], "ok": True}} if n == 54 else {}),
            )  # fmt: skip
    rows = await pool.fetch("SELECT id FROM audit_log WHERE action = 'probe.pinged' ORDER BY id")
    return [row["id"] for row in rows]


def _ids(html: str) -> list[int]:
    return [int(part.split('"')[0]) for part in html.split('data-entry="')[1:]]


async def test_a_reviewer_only_session_gets_the_403_page(client, market):
    await sign_in(client, market["alice"])
    page = await client.get("/console/audit/")
    assert page.status_code == 403
    assert "this route needs one of the roles admin; the token has reviewer" in page.text
    api = await client.get("/v1/audit", headers=bearer(market["alice"]))
    assert api.status_code == 403  # the same rule as the API's


async def test_newest_first_in_pages_of_50_with_the_filters_kept(client, admin_token, trail):
    await sign_in(client, admin_token)
    first = await client.get("/console/audit/", params={"action": "probe.pinged"})
    assert first.status_code == 200, first.text
    assert _ids(first.text) == list(reversed(trail))[:50]
    next_link = first.text.split('rel="next"')[0].rsplit('href="', 1)[1].split('"')[0]
    assert "action=probe.pinged" in next_link
    second = await client.get(next_link.replace("&amp;", "&"))
    assert _ids(second.text) == list(reversed(trail))[50:]
    assert 'rel="next"' not in second.text
    # The whole trail holds the market's entries too: unfiltered, the newest come first.
    everything = await client.get("/console/audit/")
    assert _ids(everything.text) == sorted(_ids(everything.text), reverse=True)


async def test_each_filter_narrows_the_search(client, admin_token, trail):
    await sign_in(client, admin_token)

    async def ids(**params: Any) -> list[int]:
        page = await client.get("/console/audit/", params=params)
        assert page.status_code == 200, page.text
        return _ids(page.text)

    by_subject = await ids(subject_type="probe", subject_id="p3")
    assert by_subject == [trail[n] for n in (53, 48, 43, 38, 33, 28, 23, 18, 13, 8, 3)]
    assert await ids(actor_org_id=str(ORG)) == [trail[9]]
    assert await ids(action="probe.pinged", since="2026-03-01T08:10", until="2026-03-01T08:13") == [
        trail[12],
        trail[11],
        trail[10],
    ]
    # RFC 3339 with an offset works too: 16:02 in Shanghai is 08:02 UTC.
    assert (await ids(action="probe.pinged", until="2026-03-01T16:02+08:00")) == [
        trail[1],
        trail[0],
    ]
    assert await ids(action="no.such.action") == []
    empty = await client.get("/console/audit/", params={"action": "no.such.action"})
    assert "没有符合条件的条目" in empty.text


async def test_details_are_shown_compactly_and_escaped(client, admin_token, trail):
    await sign_in(client, admin_token)
    page = await client.get(
        "/console/audit/", params={"subject_id": "p4", "action": "probe.pinged"}
    )
    row = page.text.split(f'data-entry="{trail[54]}"')[1].split("</tr>")[0]
    assert "<code>nested</code>" in row
    assert "{&#34;ok&#34;:true,&#34;rules&#34;:[&#34;NEG-06&#34;]}" in row
    assert "核查 &lt;b&gt;样本&lt;/b&gt;" in row  # the data's own markup is escaped
    assert "cli:probe-54" in row and "2026-03-01 08:54:00" in row


async def test_a_bad_filter_shows_the_problem_on_the_page(client, admin_token, trail):
    await sign_in(client, admin_token)
    page = await client.get("/console/audit/", params={"actor_org_id": "nope", "since": "soon"})
    assert page.status_code == 422
    assert "the search is not valid" in page.text
    assert "actor_org_id" in page.text and "since" in page.text
    assert 'value="nope"' in page.text  # the form keeps what was typed
