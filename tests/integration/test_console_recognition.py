"""The console's recognition page over HTTP: a trusted peer (SHDX, whose keys the test holds)
with its state, its products as this exchange recognised or refused them (with the local rule
that refused), the filters, and distrusting the peer through the recognition service."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from litestar.testing import AsyncTestClient

from exchange.app import create_app
from exchange.listings.lifecycle import product_code
from tests.kit.api import bearer
from tests.kit.console import csrf_of, hidden_fields, sign_in
from tests.kit.documents import metadata
from tests.kit.recognition import PEER, Peer

RECOGNISED = product_code(PEER, 2026, 1)
REFUSED = product_code(PEER, 2026, 2)


@pytest.fixture
async def client(settings, clock):
    """This exchange's API without background pulling (the peer's feed is not served here)."""
    app = create_app(replace(settings, peer_poll_ms=0), clock=clock)
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


@pytest.fixture
async def peer(client, settings, clock, market, admin_token) -> Peer:
    """SHDX trusted here; one of its products recognised, one refused under NEG-06."""
    peer = Peer(settings)
    trusted = await client.post(
        "/v1/peers",
        json={"code": PEER, "base_url": "http://127.0.0.1:9", "jwks": peer.jwks,
              "identity": peer.identity()},
        headers=bearer(admin_token),
    )  # fmt: skip
    assert trusted.status_code == 201, trusted.text
    now = clock.now()
    listed = metadata()
    core = metadata(classification__data_level="core", classification__general_grade=None)
    for document, code, status in ((listed, RECOGNISED, 201), (core, REFUSED, 422)):
        presented = await client.post(
            "/v1/recognitions",
            json={"certificate": peer.certificate(document, 1, now, code=code),
                  "metadata": document, "credential": peer.credential(now)},
            headers=bearer(admin_token),
        )  # fmt: skip
        assert presented.status_code == status, presented.text
    return peer


def _row(html: str, code: str) -> str:
    """The table row of one recognition."""
    start = html.index(f'data-recognition="{PEER}/{code}"')
    return html[start : html.index("</tr>", start)]


async def _peer(client: Any, admin_token: str) -> dict[str, Any]:
    (found,) = (await client.get("/v1/peers", headers=bearer(admin_token))).json()
    return dict(found)


async def test_peers_and_recognitions_with_the_rules_that_refused(client, peer, market):
    await sign_in(client, market["alice"])
    page = await client.get("/console/recognition/")
    assert page.status_code == 200, page.text
    assert f'data-peer="{PEER}" data-trusted="true"' in page.text
    assert "上海示例数据交易所" in page.text and peer.key.kid in page.text
    assert "已互认 1 个" in page.text and "已拒绝 1 个" in page.text
    recognised = _row(page.text, RECOGNISED)
    assert 'data-outcome="recognised"' in recognised and "本所产品" in recognised
    refused = _row(page.text, REFUSED)
    assert 'data-outcome="refused"' in refused
    assert 'data-rule="NEG-06"' in refused and "核心数据" in refused
    assert "2026.1" in refused  # the list version that refused it
    # A reviewer sees state, not the admins' action.
    assert "/distrust" not in page.text

    only_refused = await client.get("/console/recognition/", params={"outcome": "refused"})
    assert REFUSED in only_refused.text and f"{PEER}/{RECOGNISED}" not in only_refused.text
    other_peer = await client.get("/console/recognition/", params={"peer": "SZDX"})
    assert "没有符合条件的互认记录" in other_peer.text

    await client.get("/console/language", params={"to": "en", "next": "/console/recognition/"})
    english = await client.get("/console/recognition/", params={"outcome": "refused"})
    assert "Core data" in english.text and "under negative list 2026.1" in english.text


async def test_an_admin_distrusts_the_peer_and_its_products_are_hidden(client, peer, admin_token):
    await sign_in(client, admin_token)
    page = await client.get("/console/recognition/")
    assert f"/console/recognition/peers/{PEER}/distrust" in page.text
    done = await client.post(
        f"/console/recognition/peers/{PEER}/distrust",
        data=hidden_fields(page.text),
        follow_redirects=False,
    )
    assert done.status_code == 303, done.text
    assert (await _peer(client, admin_token))["trusted"] is False
    catalog = (await client.get("/v1/products", params={"recognised_from": PEER})).json()
    assert catalog["items"] == []
    shown = await client.get("/console/recognition/")
    assert f'data-peer="{PEER}" data-trusted="false"' in shown.text
    assert "已撤销信任" in shown.text
    audit = (
        await client.get(
            "/v1/audit",
            params={"action": "peer.distrusted", "subject_id": PEER},
            headers=bearer(admin_token),
        )
    ).json()["items"]
    me = (await client.get("/v1/me", headers=bearer(admin_token))).json()
    assert [e["actor_token_id"] for e in audit] == [me["token_id"]]


async def test_distrust_is_refused_without_csrf_to_a_reviewer_and_for_an_unknown_peer(
    client, peer, market, admin_token
):
    await sign_in(client, market["alice"])
    csrf = await csrf_of(client, "/console/recognition/")
    forged = await client.post(f"/console/recognition/peers/{PEER}/distrust", data={})
    assert forged.status_code == 403 and "CSRF" in forged.text
    refused = await client.post(f"/console/recognition/peers/{PEER}/distrust", data={"_csrf": csrf})
    assert refused.status_code == 403
    assert "this route needs one of the roles admin" in refused.text
    assert (await _peer(client, admin_token))["trusted"] is True

    client.cookies.clear()
    await sign_in(client, admin_token)
    csrf = await csrf_of(client, "/console/recognition/")
    unknown = await client.post("/console/recognition/peers/XXDX/distrust", data={"_csrf": csrf})
    assert unknown.status_code == 404
    assert "no peer XXDX" in unknown.text


async def test_recognitions_are_keyset_paged_with_the_filters_kept(
    client, peer, market, admin_token, clock
):
    core = metadata(classification__data_level="core", classification__general_grade=None)
    now = clock.now()
    for n in range(3, 53):  # 50 more refusals: 51 in all, with the fixture's
        presented = await client.post(
            "/v1/recognitions",
            json={"certificate": peer.certificate(core, 1, now, code=product_code(PEER, 2026, n)),
                  "metadata": core, "credential": peer.credential(now)},
            headers=bearer(admin_token),
        )  # fmt: skip
        assert presented.status_code == 422, presented.text
    await sign_in(client, market["alice"])
    first = await client.get("/console/recognition/", params={"outcome": "refused"})
    assert first.text.count('data-outcome="refused"') == 50
    assert "已拒绝 51 个" in first.text
    next_link = first.text.split('rel="next"')[0].rsplit('href="', 1)[1].split('"')[0]
    assert "outcome=refused" in next_link
    second = await client.get(next_link.replace("&amp;", "&"))
    assert second.status_code == 200
    assert second.text.count('data-outcome="refused"') == 1
    assert 'rel="next"' not in second.text
    seen = {
        line.split('data-recognition="')[1].split('"')[0]
        for page in (first.text, second.text)
        for line in page.splitlines()
        if 'data-recognition="' in line
    }
    assert len(seen) == 51 and f"{PEER}/{RECOGNISED}" not in seen
