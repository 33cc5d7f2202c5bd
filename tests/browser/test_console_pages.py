"""Every console page in Chromium: axe-core finds no serious or critical accessibility
violation, in Chinese and in English; and the README's screenshots, taken here."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page, expect

from exchange.console.web import NAV
from tests.browser.conftest import Console
from tests.browser.test_console_review import IMPORTANT, sign_in, submitted
from tests.kit.api import bearer
from tests.kit.documents import metadata
from tests.kit.market import list_product
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


def _pages(console: Console, staff: dict[str, Any]) -> list[str]:
    """A path of every kind of console page, with data on it."""
    listing = submitted(console, staff["seller"], metadata(**IMPORTANT))
    submitted(console, staff["other"], metadata(name_zh="第二个产品"))
    case = f"/console/reviews/{listing['review']['case_id']}"
    product = f"/console/products/{listing['id']}"
    objected, objection = console.run(_objection(console, staff))
    return [
        *(href for _, href in NAV), "/console/reviews/?kind=listing", case, product,
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
        found[path] = violations(page)
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
