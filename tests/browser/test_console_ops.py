"""The settlement and policy pages' answers in Chromium: the verifier's result and a replay's
report, reached by their buttons, have no serious or critical accessibility violation, in
Chinese and in English (the pages themselves are in test_console_pages, through NAV)."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Console
from tests.browser.test_console_pages import violations
from tests.browser.test_console_review import sign_in, submitted
from tests.kit.documents import metadata
from tests.kit.policy import candidate


@pytest.mark.parametrize("language", ["zh", "en"])
def test_the_verifier_and_a_replay_in_the_browser(
    console: Console, staff, page: Page, language: str
) -> None:
    submitted(console, staff["seller"], metadata(classification__regulated_domains=["health"]))
    sign_in(page, console, staff["admin"])
    page.goto(f"{console.url}/console/language?to={language}&next=/console/settlement/")
    page.locator("#run-verifier").click()
    expect(page.locator("#verification")).to_have_attribute("data-ok", "true")
    found = {"verification": violations(page)}
    page.goto(f"{console.url}/console/policy/")
    page.locator("#replay-source").fill(candidate())
    page.locator("#run-replay").click()
    row = page.locator("#replay-changes tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_have_attribute("data-rules-added", "NEG-09")
    found["replay"] = violations(page)
    page.goto(f"{console.url}/console/policy/2026.1")
    expect(page.locator("tr[data-rule='NEG-08']")).to_have_count(1)
    found["version"] = violations(page)
    assert {what: v for what, v in found.items() if v} == {}
