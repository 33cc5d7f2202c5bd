"""The review flow in Chromium: sign-in and its refusals, four eyes, the problem shown in the
page, CSRF, the session's end, the revision's diff, and the keyboard alone."""

from __future__ import annotations

import copy
import re
from typing import Any

from playwright.sync_api import Browser, Page, expect

from exchange.console.web import CONTENT_SECURITY_POLICY
from tests.browser.conftest import Console
from tests.kit.api import bearer
from tests.kit.documents import metadata
from tests.kit.market import claim_and_decide, evidence_for, submit

IMPORTANT = {"classification__data_level": "important", "classification__general_grade": None}


def sign_in(page: Page, console: Console, token: str, next_path: str = "/console/") -> None:
    page.goto(f"{console.url}/console/sign-in?next={next_path}")
    page.get_by_label(re.compile("令牌|token")).fill(token)
    page.get_by_role("button", name=re.compile("登录|Sign in")).click()
    page.wait_for_load_state()


def submitted(console: Console, seller: str, document: dict[str, Any]) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        async with console.client() as client:
            return await submit(client, seller, document)

    product: dict[str, Any] = console.run(run())
    return product


def test_four_eyes_in_the_browser(console: Console, staff, browser: Browser) -> None:
    product = submitted(console, staff["seller"], metadata(**IMPORTANT))
    case_id = product["review"]["case_id"]
    alice = browser.new_context(locale="zh-CN")
    page = alice.new_page()
    response = page.goto(f"{console.url}/console/sign-in")
    assert response is not None
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    sign_in(page, console, staff["alice"], "/console/reviews")
    assert page.evaluate("typeof htmx") == "object"  # loaded under the CSP, its hash checked
    row = page.locator(f"tr[data-case='{case_id}']")
    expect(row).to_contain_text("CAU-04")
    row.get_by_role("button", name="认领").click()
    expect(row).to_contain_text("放弃认领")
    row.get_by_role("link").click()
    expect(page.locator("#progress")).to_have_text("0 / 2 人已批准")
    # A second tab holds the same form: it will try to approve again later.
    stale = alice.new_page()
    stale.goto(page.url)
    page.get_by_label("批准").check()
    page.get_by_label(re.compile("CAU-04 的材料位置")).fill("doc://legal/assessment.pdf")
    page.get_by_label("理由").fill("重要数据已通过安全评估")
    page.get_by_role("button", name="提交决定").click()
    expect(page.locator("#progress")).to_have_text("1 / 2 人已批准")
    expect(page.locator("#progress")).to_have_attribute("data-approvals", "1")
    # Approving again, from the stale form: the service's problem, in the page.
    stale.get_by_label("批准").check()
    stale.get_by_label(re.compile("CAU-04 的材料位置")).fill("doc://legal/assessment.pdf")
    stale.get_by_label("理由").fill("再次批准")
    stale.get_by_role("button", name="提交决定").click()
    problem = stale.get_by_role("alert")
    expect(problem).to_contain_text("409")
    expect(problem).to_contain_text("claim the case before deciding it")
    alice.close()

    bob = browser.new_context(locale="zh-CN")
    page = bob.new_page()
    sign_in(page, console, staff["bob"], f"/console/reviews/{case_id}")
    page.get_by_role("button", name="认领").click()
    page.get_by_label("批准").check()
    page.get_by_label(re.compile("CAU-04 的材料位置")).fill("doc://legal/assessment.pdf")
    page.get_by_label("理由").fill("复核同意")
    page.get_by_role("button", name="提交决定").click()
    expect(page.locator("[data-state]")).to_have_attribute("data-state", "approved")
    certificate = page.locator("#certificate")
    expect(certificate).to_be_visible()
    answer = page.request.get(console.url + str(certificate.get_attribute("href")))
    assert answer.status == 200 and answer.json()["jws"].count(".") == 2
    status = page.request.get(
        console.url + str(page.locator("#certificate-status").get_attribute("href"))
    )
    assert status.status == 200
    bob.close()


def test_a_sellers_token_gets_the_403_page(console: Console, staff, page: Page) -> None:
    sign_in(page, console, staff["seller"])
    problem = page.get_by_role("alert")
    expect(problem).to_contain_text("403")
    expect(problem).to_contain_text("reviewer or admin")
    assert "/console/sign-in" in page.url
    assert page.context.cookies() == [] or all(
        c["name"] != "dx_console" for c in page.context.cookies()
    )


def test_a_form_without_its_csrf_token_is_refused(console: Console, staff, page: Page) -> None:
    product = submitted(console, staff["seller"], metadata())
    case_id = product["review"]["case_id"]
    sign_in(page, console, staff["alice"], f"/console/reviews/{case_id}")
    # DevTools may change the page whatever its CSP says: drop the form's hidden token.
    page.evaluate("document.querySelectorAll('input[name=_csrf]').forEach(input => input.remove())")
    page.get_by_role("button", name="认领").click()
    expect(page.get_by_role("alert")).to_contain_text("CSRF")
    case = console.run(_case(console, staff["alice"], case_id))
    assert case["claimed_by"] is None


async def _case(console: Console, token: str, case_id: str) -> dict[str, Any]:
    async with console.client() as client:
        answer = await client.get(f"/v1/reviews/{case_id}", headers=bearer(token))
        result: dict[str, Any] = answer.json()
        return result


def test_an_expired_session_returns_to_sign_in(console: Console, staff, page: Page) -> None:
    sign_in(page, console, staff["alice"], "/console/reviews")
    expect(page.get_by_role("heading", level=1)).to_have_text("审核队列")
    console.sql(
        "UPDATE console_sessions SET last_seen_at = last_seen_at - interval '1 day'"
        " WHERE ended_at IS NULL"
    )
    page.get_by_role("link", name="总览").click()
    page.wait_for_url(re.compile(r"/console/sign-in\?"))
    expect(page.get_by_role("status")).to_contain_text("会话已过期")
    ended = console.sql("SELECT end_reason FROM console_sessions")
    assert [row["end_reason"] for row in ended] == ["idle"]


def test_a_material_revision_highlights_exactly_the_changed_fields(
    console: Console, staff, page: Page
) -> None:
    original = metadata()

    async def listed_then_revised() -> str:
        async with console.client() as client:
            product = await submit(client, staff["seller"], original)
            decided = await claim_and_decide(
                client, staff["alice"], product["review"]["case_id"], evidence=evidence_for()
            )
            assert decided.status_code == 200, decided.text
            changed = copy.deepcopy(original)
            changed["summary"] = "新的简介"  # cosmetic, but changed: highlighted too
            changed["plans"][0]["price_fen"] = 2_000_000
            changed["manual"]["update_frequency"] = "daily"
            revised = await client.post(
                f"/v1/products/{product['id']}/revisions",
                json=changed,
                headers=bearer(staff["seller"]),
            )
            assert revised.status_code == 200, revised.text
            case_id: str = revised.json()["review"]["case_id"]
            return case_id

    case_id = console.run(listed_then_revised())
    sign_in(page, console, staff["bob"], f"/console/reviews/{case_id}")
    highlighted = page.locator("table.fields tr.changed")
    names = sorted(highlighted.evaluate_all("rows => rows.map(r => r.dataset.field)"))
    assert names == ["manual.update_frequency", "plans", "summary"]
    unchanged = page.locator("table.fields tbody tr:not(.changed)")
    assert unchanged.count() > 5
    assert page.locator("table.fields tr:not(.changed) ins").count() == 0
    expect(page.locator("tr[data-field='plans'] del")).to_contain_text("1000000")
    expect(page.locator("tr[data-field='plans'] ins")).to_contain_text("2000000")


def test_review_with_the_keyboard_alone(console: Console, staff, page: Page) -> None:
    product = submitted(console, staff["seller"], metadata())
    case_id = product["review"]["case_id"]
    page.goto(f"{console.url}/console/sign-in?next=/console/reviews")
    page.keyboard.press("Tab")  # the skip link
    page.keyboard.press("Tab")  # the language switch
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "token"
    page.keyboard.type(staff["alice"])
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/console/reviews$"))
    link = page.locator(f"tr[data-case='{case_id}'] a")
    _tab_to(page, link)
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(f"/console/reviews/{case_id}$"))
    _tab_to(page, page.get_by_role("button", name="认领"))
    page.keyboard.press("Enter")
    expect(page.get_by_role("button", name="提交决定")).to_be_visible()
    _tab_to(page, page.get_by_label("批准"))
    page.keyboard.press("Space")
    _tab_to(page, page.get_by_label("理由"))
    page.keyboard.type("键盘操作批准")
    _tab_to(page, page.get_by_role("button", name="提交决定"))
    page.keyboard.press("Enter")
    expect(page.locator("[data-state]")).to_have_attribute("data-state", "approved")


def _tab_to(page: Page, target: Any, limit: int = 80) -> None:
    """Press Tab until the target has the focus (as a keyboard user would)."""
    handle = target.element_handle()
    for _ in range(limit):
        if page.evaluate("element => document.activeElement === element", handle):
            return
        page.keyboard.press("Tab")
    raise AssertionError(f"Tab never reached {target}")
