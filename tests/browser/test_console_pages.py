"""Every console page in Chromium: axe-core finds no serious or critical accessibility
violation, in Chinese and in English; and the README's screenshots, taken here."""

from __future__ import annotations

import os
import re
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page, expect

from exchange.console.web import NAV
from exchange.platform.clock import SystemClock
from exchange.platform.db import create_pool
from tests.browser.conftest import Console
from tests.browser.test_console_review import IMPORTANT, sign_in, submitted
from tests.kit.api import bearer
from tests.kit.disputes import open_dispute, reserved_trade
from tests.kit.documents import metadata
from tests.kit.market import add_buyer, list_product
from tests.kit.processes import ROOT

SCREENSHOTS = ROOT / "docs" / "console"
BLOCKING = ("serious", "critical")


def violations(page: Page) -> list[str]:
    results = Axe().run(page)
    return [
        f"{v['id']} ({v['impact']}): {v['help']} — "
        + "; ".join(node["target"][0] for node in v["nodes"][:3])
        for v in results.response["violations"]
        if v["impact"] in BLOCKING
    ]


def _png() -> bytes:
    """A real 2 by 2 PNG (grey), for the evidence viewer's image preview."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", 2, 2, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00\x80\x80" * 2)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


def _disputes(console: Console, staff: dict[str, Any]) -> tuple[str, str]:
    """A reserved trade the buyer disputes, with a text and an image item; and a trade at the
    four-eyes amount whose dispute is escalated, with an award proposed by the admin that waits
    for a second admin: the two disputes' ids."""

    async def run() -> tuple[str, str]:
        assert console.settings.database_url
        pool = await create_pool(console.settings.database_url, max_size=2)
        try:
            async with console.client() as client:
                trade = await add_buyer(client, staff["admin"], staff)
                (trade_id,) = await reserved_trade(
                    client, trade, staff["admin"], console.settings, pool, SystemClock()
                )
                opened = await open_dispute(client, trade["buyer"], trade_id)
                assert opened.status_code == 201, opened.text
                dispute_id: str = opened.json()["id"]
                for kind, name, media_type, body in (
                    ("statement", "statement.txt", "text/plain", "已按约定交付".encode()),
                    ("screenshot", "table.png", "image/png", _png()),
                ):
                    added = await client.post(
                        f"/v1/disputes/{dispute_id}/evidence?type={kind}&name={name}",
                        content=body,
                        headers={**bearer(trade["buyer"]), "content-type": media_type},
                    )
                    assert added.status_code == 201, added.text
                waiting = await _award_waiting(client, staff, trade, console.settings, pool)
                return dispute_id, waiting
        finally:
            await pool.close()

    ids: tuple[str, str] = console.run(run())
    return ids


async def _award_waiting(
    client: Any, staff: dict[str, Any], trade: dict[str, Any], settings: Any, pool: Any
) -> str:
    """An escalated dispute at the four-eyes amount whose award the admin proposed: its id."""
    (trade_id,) = await reserved_trade(
        client, trade, staff["admin"], settings, pool, SystemClock(), quantity=2
    )
    opened = await open_dispute(client, trade["buyer"], trade_id, claimed_fen=200_000)
    assert opened.status_code == 201 and opened.json()["four_eyes"], opened.text
    base = f"/v1/disputes/{opened.json()['id']}"
    escalated = await client.post(f"{base}/escalation", headers=bearer(trade["seller"]),
                                  json={"forum": "上海仲裁委员会", "note": "申请仲裁"})  # fmt: skip
    assert escalated.status_code == 200, escalated.text
    document = await client.post(f"{base}/evidence?type=award&name=award.pdf",
                                 content=b"%PDF-1 award",
                                 headers={**bearer(staff["admin"]),
                                          "content-type": "application/pdf"})  # fmt: skip
    assert document.status_code == 201, document.text
    proposed = await client.post(f"{base}/award", headers=bearer(staff["admin"]), json={
        "resolution": {"kind": "release_to_seller"},
        "document_sha256": document.json()["sha256"], "note": "裁决",
    })  # fmt: skip
    assert proposed.status_code == 202, proposed.text
    return str(opened.json()["id"])


def _pages(console: Console, staff: dict[str, Any]) -> list[str]:
    """A path of every kind of console page, with data on it."""
    listing = submitted(console, staff["seller"], metadata(**IMPORTANT))
    submitted(console, staff["other"], metadata(name_zh="第二个产品"))
    case = f"/console/reviews/{listing['review']['case_id']}"
    product = f"/console/products/{listing['id']}"
    dispute, awaiting_award = _disputes(console, staff)
    objected, objection = console.run(_objection(console, staff))
    return [
        *(href for _, href in NAV), "/console/reviews/?kind=listing", case, product,
        f"/console/disputes/{dispute}", f"/console/disputes/{awaiting_award}",
        f"/console/objections/{objection}", f"/console/products/{objected}",
    ]  # fmt: skip


async def _objection(console: Console, staff: dict[str, Any]) -> tuple[str, str]:
    """A listed product of "other" and the seller's open objection to it: their ids."""
    async with console.client() as client:
        product_id = await list_product(
            client, staff, metadata(name_zh="第三个产品"), seller=staff["other"]
        )
        response = await client.post(
            f"/v1/products/{product_id}/objections",
            json={"claim": "ownership", "statement": "权属争议", "evidence_sha256": ["ab" * 32]},
            headers=bearer(staff["seller"]),
        )
        assert response.status_code == 201, response.text
        return product_id, response.json()["id"]


@pytest.mark.parametrize("language", ["zh", "en"])
def test_no_serious_accessibility_violation_on_any_page(
    console: Console, staff, page: Page, language: str
) -> None:
    paths = _pages(console, staff)
    found: dict[str, list[str]] = {}
    page.goto(f"{console.url}/console/sign-in")
    found["/console/sign-in"] = violations(page)
    sign_in(page, console, staff["admin"])  # an admin sees every page (the audit trail too)
    page.goto(f"{console.url}/console/language?to={language}&next=/console/")
    for path in paths:
        response = page.goto(console.url + path)
        assert response is not None and response.status == 200, path
        expect(page.locator("html")).to_have_attribute(
            "lang", "zh-CN" if language == "zh" else "en"
        )
        # Previews folded in <details> (the evidence viewer's) are checked open.
        page.locator("details").evaluate_all("all => all.forEach(d => { d.open = true; })")
        found[path] = violations(page)
    # The evidence viewer's image preview loads from the console's own route under the CSP.
    dispute, awaiting = [p for p in paths if p.startswith("/console/disputes/")]
    page.goto(console.url + dispute)
    page.locator("details").evaluate_all("all => all.forEach(d => { d.open = true; })")
    image = page.locator("img.evidence-image")
    expect(image).to_be_visible()
    image.scroll_into_view_if_needed()  # loading="lazy": fetched once in view
    expect(image).to_have_js_property("complete", True)
    assert image.evaluate("i => i.naturalWidth") == 2
    # The award waiting for a second admin is on its page (checked above like every page).
    page.goto(console.url + awaiting)
    expect(page.locator("#award-pending")).to_be_visible()
    expect(page.locator("#record-award")).to_have_attribute("aria-describedby", "award-help")
    # An error page, too.
    page.goto(f"{console.url}/console/reviews/00000000-0000-0000-0000-000000000000")
    found["404"] = violations(page)
    assert {path: v for path, v in found.items() if v} == {}


def test_screenshots_of_the_queue_and_a_case(
    console: Console, staff, page: Page, tmp_path: Path
) -> None:
    """The README shows these: taken by this browser. `DATAEX_UPDATE_SCREENSHOTS=1` writes
    them into docs/console/; otherwise they go to the test's folder and are checked there."""
    for index in range(3):
        submitted(console, staff["seller"], metadata(name_zh=f"城市气象观测数据 {index + 1}"))
    listing = submitted(console, staff["other"], metadata(**IMPORTANT))
    sign_in(page, console, staff["alice"], "/console/reviews")
    target = SCREENSHOTS if os.environ.get("DATAEX_UPDATE_SCREENSHOTS") == "1" else tmp_path
    target.mkdir(parents=True, exist_ok=True)
    expect(page.locator("table.queue tbody tr")).to_have_count(4)
    page.screenshot(path=target / "queue.png", full_page=True)
    page.goto(f"{console.url}/console/reviews/{listing['review']['case_id']}")
    page.get_by_role("button", name="认领").click()
    expect(page.get_by_role("button", name="提交决定")).to_be_visible()
    page.screenshot(path=target / "case.png", full_page=True)
    for name in ("queue.png", "case.png"):
        data = (target / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 20_000, name
    assert re.search(r"审核案件", page.locator("h1").inner_text())
