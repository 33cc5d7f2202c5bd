"""The console's policy pages over HTTP: the published versions and a version's rules as
``/v1/policy/lists`` gives them; the replay of a candidate list showing exactly the changes
``POST /v1/policy/replay`` reports; publishing through the same service as ``POST
/v1/policy/lists``; admin only, as on the API; CSRF; the problem's text when refused."""

from __future__ import annotations

import html
import re
from datetime import timedelta

from tests.kit.api import bearer
from tests.kit.console import csrf_of, hidden_fields, sign_in
from tests.kit.documents import DEIDENTIFIED_PI, metadata
from tests.kit.market import submit
from tests.kit.policy import candidate

ROW = re.compile(
    r'<tr data-subject-type="(?P<type>[^"]*)" data-subject="(?P<id>[^"]*)"'
    r' data-before="(?P<before>[^"]*)" data-after="(?P<after>[^"]*)"'
    r' data-rules-before="(?P<rules_before>[^"]*)" data-rules-after="(?P<rules_after>[^"]*)"'
    r' data-rules-added="(?P<added>[^"]*)" data-rules-removed="(?P<removed>[^"]*)">'
)


def rendered_changes(page: str) -> list[dict[str, object]]:
    return [
        {
            "subject_type": m["type"],
            "subject_id": m["id"],
            "before": m["before"],
            "after": m["after"],
            "rules_before": m["rules_before"].split(),
            "rules_after": m["rules_after"].split(),
            "rules_added": m["added"].split(),
            "rules_removed": m["removed"].split(),
        }
        for m in ROW.finditer(page)
    ]


def api_changes(report: dict[str, object]) -> list[dict[str, object]]:
    return [
        {
            "subject_type": c["subject_type"],
            "subject_id": c["subject_id"],
            "before": c["before"]["decision"],
            "after": c["after"]["decision"],
            "rules_before": c["before"]["rules"],
            "rules_after": c["after"]["rules"],
            "rules_added": c["rules_added"],
            "rules_removed": c["rules_removed"],
        }
        for c in report["changed"]  # type: ignore[attr-defined]
    ]


async def open_decisions(client, market) -> list[str]:
    """Products awaiting review: two of health data (CAU-09), one with identifiable personal
    information (CAU-02), one with no rule hit; their ids."""
    documents = [
        metadata(classification__regulated_domains=["health"]),
        metadata(classification__regulated_domains=["health"], name_zh="医院门诊统计"),
        metadata(classification__personal_info=DEIDENTIFIED_PI),
        metadata(),
    ]
    return [str((await submit(client, market["seller"], d))["id"]) for d in documents]


async def test_the_versions_and_a_versions_rules_are_the_apis(client, market):
    listed = (await client.get("/v1/policy/lists")).json()
    detail = (await client.get("/v1/policy/lists/2026.1")).json()
    await sign_in(client, market["alice"])
    page = await client.get("/console/policy/")
    assert page.status_code == 200, page.text
    assert [i["version"] for i in listed] == ["2026.1"]
    assert '<tr data-version="2026.1" data-current="true">' in page.text
    version = await client.get("/console/policy/2026.1")
    assert version.status_code == 200, version.text
    rules = re.findall(r'<tr data-rule="([^"]+)"', version.text)
    assert rules == [r["id"] for r in detail["rules"]]
    assert detail["info"]["digest"] in version.text
    missing = await client.get("/console/policy/2099.9")
    assert missing.status_code == 404
    assert "no published policy list 2099.9" in missing.text


async def test_replay_in_the_console_shows_the_same_changes_as_the_api(client, market, admin_token):
    products = await open_decisions(client, market)
    source = candidate()
    api = await client.post(
        "/v1/policy/replay", json={"source": source}, headers=bearer(admin_token)
    )
    assert api.status_code == 200, api.text
    report = api.json()
    expected = api_changes(report)
    # The candidate changes the three products with a rule it adds or drops, not the clean one.
    assert {c["subject_id"] for c in expected} == set(products[:3])
    assert any(c["rules_added"] == ["NEG-09"] for c in expected)
    assert any(c["rules_removed"] == ["CAU-02"] for c in expected)

    await sign_in(client, admin_token)
    csrf = await csrf_of(client, "/console/policy/")
    page = await client.post(
        "/console/policy/replay", data={"_csrf": csrf, "version": "", "source": source}
    )
    assert page.status_code == 200, page.text
    assert rendered_changes(page.text) == expected
    assert (
        f'data-version="2026.2" data-digest="{report["list_digest"]}"'
        f' data-subjects="{report["subjects"]}" data-unchanged="{report["unchanged"]}"'
        f' data-changed="3"'
    ) in page.text
    # Looking published nothing.
    assert [i["version"] for i in (await client.get("/v1/policy/lists")).json()] == ["2026.1"]


async def test_replay_of_a_stored_version_matches_the_api(client, market, admin_token):
    await open_decisions(client, market)
    api = await client.post(
        "/v1/policy/replay", json={"version": "2026.1"}, headers=bearer(admin_token)
    )
    await sign_in(client, admin_token)
    csrf = await csrf_of(client, "/console/policy/")
    page = await client.post(
        "/console/policy/replay", data={"_csrf": csrf, "version": "2026.1", "source": ""}
    )
    assert page.status_code == 200, page.text
    assert rendered_changes(page.text) == api_changes(api.json()) == []
    assert 'data-subjects="4" data-unchanged="4" data-changed="0"' in page.text
    assert 'id="publish"' not in page.text  # published already: nothing to publish


async def test_an_admin_publishes_the_replayed_candidate(client, market, admin_token, clock):
    await sign_in(client, admin_token)
    csrf = await csrf_of(client, "/console/policy/")
    replayed = await client.post(
        "/console/policy/replay", data={"_csrf": csrf, "version": "", "source": candidate()}
    )
    fields = hidden_fields(replayed.text[replayed.text.index('action="/console/policy/publish"') :])
    when = (clock.now() + timedelta(days=30)).replace(microsecond=0).isoformat()
    published = await client.post(
        "/console/policy/publish",
        data={"_csrf": fields["_csrf"], "source": html.unescape(fields["source"]),
              "effective_from": when},
        follow_redirects=False,
    )  # fmt: skip
    assert published.status_code == 303, published.text
    assert published.headers["location"] == "/console/policy/2026.2"
    lists = (await client.get("/v1/policy/lists")).json()
    assert [(i["version"], i["current"]) for i in lists] == [("2026.1", True), ("2026.2", False)]
    detail = (await client.get("/v1/policy/lists/2026.2")).json()
    assert "NEG-09" in [r["id"] for r in detail["rules"]]
    assert detail["source"] == candidate()  # as pasted, not as the browser's CRLF
    audit = (
        await client.get("/v1/audit", params={"subject_id": "2026.2"}, headers=bearer(admin_token))
    ).json()["items"]
    me = (await client.get("/v1/me", headers=bearer(admin_token))).json()
    assert [(e["action"], e["actor_token_id"]) for e in audit] == [
        ("policy.published", me["token_id"])
    ]
    page = await client.get("/console/policy/2026.2")
    assert '<tr data-rule="NEG-09" data-list="negative">' in page.text


async def test_a_refused_publication_shows_the_services_problem(client, market, admin_token):
    await sign_in(client, admin_token)
    csrf = await csrf_of(client, "/console/policy/")
    in_the_past = await client.post(
        "/console/policy/publish",
        data={"_csrf": csrf, "source": candidate(), "effective_from": "2020-01-01T00:00:00+08:00"},
    )
    assert in_the_past.status_code == 422
    assert "effective_from is in the past" in in_the_past.text
    same_number = await client.post(
        "/console/policy/publish",
        data={"_csrf": csrf, "source": candidate().replace('"2026.2"', '"2026.1"')},
    )
    assert same_number.status_code == 409
    assert "versions are immutable" in same_number.text
    assert [i["version"] for i in (await client.get("/v1/policy/lists")).json()] == ["2026.1"]


async def test_an_invalid_candidate_shows_every_problem(client, market, admin_token):
    await sign_in(client, admin_token)
    csrf = await csrf_of(client, "/console/policy/")
    broken = candidate().replace(
        'list = "negative"\nscope = "product"\ntitle_zh = "医疗',
        ('list = "sideways"\nscope = "product"\ntitle_zh = "医疗'),
    )
    page = await client.post(
        "/console/policy/replay", data={"_csrf": csrf, "version": "", "source": broken}
    )
    assert page.status_code == 422
    assert "the policy list is invalid" in page.text
    assert "NEG-09" in page.text
    both = await client.post(
        "/console/policy/replay", data={"_csrf": csrf, "version": "2026.1", "source": broken}
    )
    assert both.status_code == 422
    assert "give either version or source" in both.text


async def test_a_reviewer_may_read_but_not_replay_or_publish(client, market):
    await sign_in(client, market["alice"])
    page = await client.get("/console/policy/")
    assert 'action="/console/policy/replay"' not in page.text
    assert "需要管理员角色" in page.text
    csrf = hidden_fields(page.text)["_csrf"]
    for action, data in (
        ("replay", {"version": "2026.1"}),
        ("publish", {"source": candidate()}),
    ):
        refused = await client.post(f"/console/policy/{action}", data={"_csrf": csrf, **data})
        assert refused.status_code == 403, action
        assert "this route needs one of the roles admin; the token has reviewer" in refused.text
    assert [i["version"] for i in (await client.get("/v1/policy/lists")).json()] == ["2026.1"]


async def test_replay_and_publish_need_the_forms_csrf_token(client, market, admin_token):
    await sign_in(client, admin_token)
    for action in ("replay", "publish"):
        refused = await client.post(f"/console/policy/{action}", data={"source": candidate()})
        assert refused.status_code == 403
        assert "CSRF" in refused.text
    assert [i["version"] for i in (await client.get("/v1/policy/lists")).json()] == ["2026.1"]
