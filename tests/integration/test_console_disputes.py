"""The console's dispute pages over HTTP against real disputes: the list and its filters, a
dispute's deadlines, evidence (downloads, previews) and history, the resolution form (a split
that moves the money; four-eyes with two reviewers), the admins' award form (four-eyes with two
admins at or above the amount), the bundle; and
the disputes service's oldest-first list and transitions they read."""

from __future__ import annotations

import hashlib
import html
import re
import uuid
from datetime import UTC, datetime, timedelta

from exchange.disputes.bundle import verify_bundle
from exchange.disputes.schemas import ReleaseToSeller, resolution_digest
from exchange.disputes.states import OPEN
from exchange.platform.auth import principal_for
from exchange.platform.signing import jwks
from tests.kit.api import bearer, issue_token
from tests.kit.console import hidden_fields, sign_in
from tests.kit.disputes import HELD, PNG, open_dispute, reserved_trade, service, trade_state

TEXT = "已按约定交付。<script>alert(1)</script>\n第二行".encode()
JSON = b'{"rows":12,"fields":["a","b"]}'


async def _disputed(client, trade, admin_token, settings, pool, clock, n=1, quantity=1, **body):
    """``n`` reserved trades, each with a dispute opened by the buyer (a second apart)."""
    trade_ids = await reserved_trade(client, trade, admin_token, settings, pool, clock, n,
                                     quantity)  # fmt: skip
    disputes = []
    for trade_id in trade_ids:
        opened = await open_dispute(client, trade["buyer"], trade_id, **body)
        assert opened.status_code == 201, opened.text
        disputes.append(opened.json())
        clock.advance(timedelta(seconds=1))
    return disputes


async def _upload(client, token, dispute_id, kind, name, media_type, body):
    response = await client.post(
        f"/v1/disputes/{dispute_id}/evidence?type={kind}&name={name}", content=body,
        headers={**bearer(token), "content-type": media_type},
    )  # fmt: skip
    assert response.status_code == 201, response.text
    return response.json()


async def _respond(client, trade, dispute_id):
    response = await client.post(f"/v1/disputes/{dispute_id}/response",
                                 json={"statement": "已交付, 见日志"},
                                 headers=bearer(trade["seller"]))  # fmt: skip
    assert response.status_code == 200, response.text


def _selected(page: str, name: str) -> str | None:
    """The selected option's value of the first select named ``name``."""
    select = re.search(rf'<select[^>]* name="{name}"[^>]*>(.*?)</select>', page, re.S)
    assert select is not None, name
    chosen = re.search(r'<option value="([^"]*)" selected>', select.group(1))
    return chosen.group(1) if chosen else None


# --- the service ---------------------------------------------------------------------------------


async def test_the_service_lists_oldest_first_by_state_reason_and_keyset(
    client, trade, admin_token, settings, pool, clock
):
    first, second, third = await _disputed(client, trade, admin_token, settings, pool, clock, 3)
    withdrawn = await client.post(f"/v1/disputes/{second['id']}/withdrawal",
                                  headers=bearer(trade["buyer"]))  # fmt: skip
    assert withdrawn.status_code == 200
    disputes = service(pool, clock, settings)
    staff = await _principal(client, trade["alice"], pool)
    ids = [str(d.id) for d in await disputes.oldest(staff, states=OPEN)]
    assert ids == [first["id"], third["id"]]
    every = await disputes.oldest(staff)
    assert [str(d.id) for d in every] == [first["id"], second["id"], third["id"]]
    page = await disputes.oldest(staff, limit=1)
    rest = await disputes.oldest(staff, after=(page[0].opened_at, page[0].id))
    assert [str(d.id) for d in page + rest] == [str(d.id) for d in every]
    assert await disputes.oldest(staff, reason="other") == []
    one = await disputes.oldest(staff, trade_id=uuid.UUID(third["trade_id"]))
    assert [str(d.id) for d in one] == [third["id"]]
    outsider = await _principal(client, trade["other"], pool)
    assert await disputes.oldest(outsider) == []
    buyer = await _principal(client, trade["buyer"], pool)
    assert len(await disputes.oldest(buyer)) == 3
    steps = await disputes.transitions(staff, uuid.UUID(second["id"]))
    assert [(s.seq, s.from_state, s.action, s.to_state) for s in steps] == [
        (0, None, "open", "opened"),
        (1, "opened", "notify", "awaiting_response"),
        (2, "awaiting_response", "withdraw", "closed"),
    ]


async def _principal(client, token, pool):
    return await principal_for(pool, datetime.now(UTC), token)


# --- the list ------------------------------------------------------------------------------------


async def test_the_list_shows_open_disputes_oldest_first_with_filters_and_overdue_badges(
    client, trade, admin_token, settings, pool, clock
):
    first, second, third = await _disputed(client, trade, admin_token, settings, pool, clock, 3)
    await client.post(f"/v1/disputes/{second['id']}/withdrawal", headers=bearer(trade["buyer"]))
    await _respond(client, trade, third["id"])
    await sign_in(client, trade["alice"])
    page = await client.get("/console/disputes/")
    assert page.status_code == 200, page.text
    rows = re.findall(r'data-dispute="([^"]+)" data-state="([^"]+)"', page.text)
    assert rows == [(first["id"], "awaiting_response"), (third["id"], "under_review")]
    assert f'href="/console/trades/{first["trade_id"]}"' in page.text
    assert "¥500.00" in page.text and "与描述不符" in page.text and "买方" in page.text
    assert "data-overdue" not in page.text and "还剩 6 天" in page.text
    every = await client.get("/console/disputes/", params={"state": "any"})
    assert re.findall(r'data-dispute="([^"]+)"', every.text) == [
        first["id"], second["id"], third["id"],
    ]  # fmt: skip
    closed = await client.get("/console/disputes/", params={"state": "closed"})
    assert re.findall(r'data-dispute="([^"]+)"', closed.text) == [second["id"]]
    other = await client.get("/console/disputes/", params={"reason": "other"})
    assert "data-dispute=" not in other.text and "没有符合条件的争议" in other.text
    trade_page = await client.get(f"/console/trades/{third['trade_id']}")
    link = f"/console/disputes/?state=any&amp;trade={third['trade_id']}"
    assert f'id="disputes-link" href="{link}"' in trade_page.text
    mine = await client.get("/console/disputes/", params={"trade": third["trade_id"]})
    assert re.findall(r'data-dispute="([^"]+)"', mine.text) == [third["id"]]
    # The respondent's deadline passes (the sweep has not run yet): overdue, by the server clock.
    clock.advance(timedelta(days=settings.dispute_response_days, hours=1))
    await sign_in(client, trade["alice"])  # the session has ended meanwhile
    late = await client.get("/console/disputes/")
    assert f'data-dispute="{first["id"]}" data-state="awaiting_response" data-overdue="true"' in (
        late.text
    )
    assert f'data-dispute="{third["id"]}" data-state="under_review" data-overdue' not in late.text
    english = await client.get("/console/language", params={"to": "en", "next": "/console/"})
    assert english.status_code == 200
    shown = await client.get("/console/disputes/")
    assert "Trade disputes" in shown.text and "overdue" in shown.text


# --- a dispute's page ----------------------------------------------------------------------------


async def test_the_page_shows_deadlines_evidence_with_previews_and_the_history(
    client, trade, admin_token, settings, pool, clock
):
    (dispute,) = await _disputed(client, trade, admin_token, settings, pool, clock)
    base = f"/console/disputes/{dispute['id']}"
    text = await _upload(client, trade["seller"], dispute["id"], "statement", "答辩.txt",
                         "text/plain; charset=utf-8", TEXT)  # fmt: skip
    png = await _upload(client, trade["buyer"], dispute["id"], "screenshot", "table.png",
                        "image/png", PNG)  # fmt: skip
    data = await _upload(client, trade["buyer"], dispute["id"], "data_sample", "sample.json",
                         "application/json", JSON)  # fmt: skip
    await sign_in(client, trade["alice"])
    page = await client.get(base)
    assert page.status_code == 200, page.text
    assert 'id="dispute-state" data-state="awaiting_response"' in page.text
    assert 'id="respond-by" data-overdue="false"' in page.text and "还剩 6 天" in page.text
    assert 'id="acceptance-due" data-passed="false"' in page.text
    assert 'id="held" data-fen="1010000"' in page.text and "¥10,100.00" in page.text
    assert "字段与说明书不符" in page.text and "尚未答辩" in page.text
    assert 'id="progress" data-approvals="0" data-needed="1"' in page.text
    # Every item: the exchange's own (contract, ledger receipt …) and the parties'.
    items = (await client.get(f"/v1/disputes/{dispute['id']}/evidence",
                              headers=bearer(admin_token))).json()["items"]  # fmt: skip
    for item in items:
        assert f'data-sha256="{item["sha256"]}" data-kind="{item["kind"]}"' in page.text
        assert f"{base}/evidence/{item['sha256']}" in page.text
    assert {"contract", "ledger_receipt"} <= {i["kind"] for i in items}
    # Text previews escaped in a <pre>; the image from the console's own route.
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "<script>alert" not in page.text
    assert f'<img src="{base}/evidence/{png["sha256"]}" alt="table.png"' in page.text
    assert "&#34;rows&#34;: 12" in page.text or "&quot;rows&quot;: 12" in page.text
    assert f'id="preview-{text["index"]}"' in page.text
    assert f'id="preview-{data["index"]}"' in page.text
    assert 'data-action="open" data-to="opened"' in page.text
    assert 'data-action="notify" data-to="awaiting_response"' in page.text
    # The deadline passes and the sweep moves the case to review: shown as it happened.
    clock.advance(timedelta(days=8))
    assert await service(pool, clock, settings).move_due() == 1
    await sign_in(client, trade["alice"])  # the session has ended meanwhile
    later = await client.get(base)
    assert 'data-action="respondent_deadline" data-to="under_review"' in later.text
    assert 'id="acceptance-due" data-passed="true"' in later.text
    assert 'id="resolution-form"' in later.text
    missing = await client.get(f"/console/disputes/{uuid.uuid4()}")
    assert missing.status_code == 404


async def test_evidence_downloads_are_attachments_never_sniffed(
    client, trade, admin_token, settings, pool, clock
):
    (dispute,) = await _disputed(client, trade, admin_token, settings, pool, clock)
    base = f"/console/disputes/{dispute['id']}"
    text = await _upload(client, trade["seller"], dispute["id"], "statement", "答辩.txt",
                         "text/plain", TEXT)  # fmt: skip
    png = await _upload(client, trade["buyer"], dispute["id"], "screenshot", "table.png",
                        "image/png", PNG)  # fmt: skip
    await sign_in(client, trade["alice"])
    for item, body, media_type in ((text, TEXT, "text/plain"), (png, PNG, "image/png")):
        got = await client.get(f"{base}/evidence/{item['sha256']}")
        assert got.status_code == 200
        assert got.content == body and hashlib.sha256(got.content).hexdigest() == item["sha256"]
        assert got.headers["x-content-type-options"] == "nosniff"
        assert got.headers["content-type"].startswith(media_type)
        assert got.headers["content-disposition"].startswith("attachment")
        assert got.headers["content-security-policy"].startswith("default-src 'none'")
    assert (await client.get(f"{base}/evidence/{'0' * 64}")).status_code == 404
    assert (await client.get(f"{base}/evidence/not-a-digest")).status_code == 404


async def test_the_bundle_downloads_and_verifies_offline(
    client, trade, admin_token, settings, pool, clock
):
    (dispute,) = await _disputed(client, trade, admin_token, settings, pool, clock)
    await _upload(client, trade["buyer"], dispute["id"], "screenshot", "table.png", "image/png",
                  PNG)  # fmt: skip
    await sign_in(client, trade["alice"])
    page = await client.get(f"/console/disputes/{dispute['id']}")
    assert f'href="/console/disputes/{dispute["id"]}/bundle"' in page.text
    tar = await client.get(f"/console/disputes/{dispute['id']}/bundle")
    assert tar.status_code == 200
    assert tar.headers["content-type"] == "application/x-tar"
    assert tar.headers["content-disposition"] == (
        f'attachment; filename="dispute-{dispute["id"]}.tar"'
    )
    assert tar.headers["x-content-type-options"] == "nosniff"
    assert int(tar.headers["content-length"]) == len(tar.content)
    verified = verify_bundle(tar.content, await jwks(pool))
    assert verified is not None


# --- resolving -----------------------------------------------------------------------------------


async def test_a_reviewer_splits_through_the_form_and_the_money_moves(
    client, trade, admin_token, settings, pool, clock
):
    (dispute,) = await _disputed(client, trade, admin_token, settings, pool, clock,
                                 claimed_fen=99_000)  # fmt: skip
    base = f"/console/disputes/{dispute['id']}"
    await sign_in(client, trade["alice"])
    waiting = await client.get(base)
    assert 'id="resolution-form"' not in waiting.text and "争议进入审查" in waiting.text
    await _respond(client, trade, dispute["id"])
    page = await client.get(base)
    assert 'id="resolution-form"' in page.text and "已交付, 见日志" in page.text
    fields = hidden_fields(page.text)
    forged = await client.post(f"{base}/resolution",
                               data={"kind": "split", "refund_fen": "333300", "note": "x"})  # fmt: skip
    assert forged.status_code == 403 and "CSRF" in forged.text
    whole = await client.post(f"{base}/resolution", data={
        **fields, "kind": "split", "refund_fen": str(HELD), "note": "全部退款",
    })  # fmt: skip
    assert whole.status_code == 422, whole.text
    assert 'role="alert" data-status="422"' in whole.text and "resolution.refund_fen" in whole.text
    assert _selected(whole.text, "kind") == "split"  # the form as it was sent
    blank = await client.post(f"{base}/resolution", data={**fields, "kind": "split", "note": "x"})
    assert blank.status_code == 422 and "resolution.refund_fen" in blank.text
    done = await client.post(
        f"{base}/resolution",
        data={**fields, "kind": "split", "refund_fen": "333,300", "note": "部分不符"},
        follow_redirects=False,
    )
    assert done.status_code == 303, done.text
    assert done.headers["location"] == f"{base}?done=resolved"
    assert await trade_state(client, trade["buyer"], dispute["trade_id"]) == "split"
    view = (await client.get(f"/v1/disputes/{dispute['id']}", headers=bearer(admin_token))).json()
    assert view["state"] == "closed" and view["money"]["refund_fen"] == 333_300
    shown = await client.get(done.headers["location"])
    assert 'id="flash" data-done="resolved"' in shown.text and "¥3,333.00" in shown.text
    assert 'id="money" data-state="split"' in shown.text
    assert f'id="resolution-digest">{view["resolution_digest"]}<' in shown.text
    assert 'id="resolution-form"' not in shown.text
    # The same form again: the service's 409, in the page.
    again = await client.post(f"{base}/resolution", data={
        **fields, "kind": "split", "refund_fen": "333300", "note": "再次",
    })  # fmt: skip
    assert again.status_code == 409 and 'data-code="illegal_transition"' in again.text
    audit = await pool.fetch(
        "SELECT action FROM audit_log WHERE subject_id = $1 ORDER BY id", dispute["id"]
    )
    assert "dispute.resolved" in [a["action"] for a in audit]


async def test_four_eyes_in_the_console_one_reviewer_twice_then_a_second_one(
    client, trade, admin_token, settings, pool, clock
):
    (dispute,) = await _disputed(client, trade, admin_token, settings, pool, clock,
                                 quantity=2, claimed_fen=200_000)  # fmt: skip
    await _respond(client, trade, dispute["id"])
    base = f"/console/disputes/{dispute['id']}"
    release = {"kind": "release_to_seller", "note": "交付记录完整"}
    await sign_in(client, trade["alice"])
    page = await client.get(base)
    assert 'id="progress" data-approvals="0" data-needed="2"' in page.text
    proposed = await client.post(f"{base}/resolution", data={**hidden_fields(page.text), **release},
                                 follow_redirects=False)  # fmt: skip
    assert proposed.status_code == 303
    assert proposed.headers["location"] == f"{base}?done=pending"
    digest = resolution_digest(
        uuid.UUID(dispute["id"]), uuid.UUID(dispute["trade_id"]), ReleaseToSeller()
    )
    shown = await client.get(proposed.headers["location"])
    assert 'id="flash" data-done="pending"' in shown.text and digest in shown.text
    assert f'id="pending" data-digest="{digest}"' in shown.text
    assert 'id="progress" data-approvals="1" data-needed="2"' in shown.text
    twice = await client.post(f"{base}/resolution", data={**hidden_fields(shown.text), **release})
    assert twice.status_code == 409
    assert "a second, different reviewer must approve it" in html.unescape(twice.text)
    assert await trade_state(client, trade["buyer"], dispute["trade_id"]) == "disputed"

    await sign_in(client, trade["bob"])
    second = await client.get(base)
    assert _selected(second.text, "kind") == "release_to_seller"  # the proposal, prefilled
    other = await client.post(f"{base}/resolution",
                              data={**hidden_fields(second.text), "kind": "refund_buyer",
                                    "note": "x"})  # fmt: skip
    assert other.status_code == 409 and 'data-code="resolution_pending"' in other.text
    approved = await client.post(
        f"{base}/resolution", data={**hidden_fields(second.text), **release, "note": "复核同意"},
        follow_redirects=False,
    )  # fmt: skip
    assert approved.status_code == 303
    assert approved.headers["location"] == f"{base}?done=resolved"
    assert await trade_state(client, trade["buyer"], dispute["trade_id"]) == "settled"
    final = await client.get(approved.headers["location"])
    assert 'id="progress" data-approvals="2" data-needed="2"' in final.text
    assert 'id="dispute-state" data-state="closed"' in final.text


async def test_the_award_form_is_for_admins_only(client, trade, admin_token, settings, pool, clock):
    (dispute,) = await _disputed(client, trade, admin_token, settings, pool, clock)
    base = f"/console/disputes/{dispute['id']}"
    escalated = await client.post(f"/v1/disputes/{dispute['id']}/escalation",
                                  json={"forum": "上海仲裁委员会", "note": "申请仲裁"},
                                  headers=bearer(trade["seller"]))  # fmt: skip
    assert escalated.status_code == 200, escalated.text
    await sign_in(client, admin_token)
    no_document = await client.get(base)
    assert 'id="no-award-document"' in no_document.text and 'id="award-form"' not in (
        no_document.text
    )
    award = await _upload(client, admin_token, dispute["id"], "award", "award.pdf",
                          "application/pdf", b"%PDF-1 award")  # fmt: skip
    body = {"kind": "release_to_seller", "document_sha256": award["sha256"], "note": "裁决"}

    await sign_in(client, trade["alice"])
    page = await client.get(base)
    assert "上海仲裁委员会" in page.text and 'id="award-form"' not in page.text
    assert "只有管理员可以记录仲裁裁决" in page.text
    refused = await client.post(f"{base}/award", data={**hidden_fields(page.text), **body})
    assert refused.status_code == 403
    assert "this route needs one of the roles admin" in refused.text

    await sign_in(client, admin_token)
    page = await client.get(base)
    assert 'id="award-form"' in page.text and f'<option value="{award["sha256"]}"' in page.text
    wrong = await client.post(f"{base}/award", data={
        **hidden_fields(page.text), **body, "kind": "split", "refund_fen": "0",
    })  # fmt: skip
    assert wrong.status_code == 422 and _selected(wrong.text, "kind") == "split"
    done = await client.post(f"{base}/award", data={**hidden_fields(page.text), **body},
                             follow_redirects=False)  # fmt: skip
    assert done.status_code == 303 and done.headers["location"] == f"{base}?done=awarded"
    view = (await client.get(f"/v1/disputes/{dispute['id']}", headers=bearer(admin_token))).json()
    assert view["state"] == "closed" and view["escalation"]["award_sha256"] == award["sha256"]
    assert await trade_state(client, trade["buyer"], dispute["trade_id"]) == "settled"
    shown = await client.get(done.headers["location"])
    assert 'id="flash" data-done="awarded"' in shown.text
    assert f'id="award-sha256">{award["sha256"]}<' in shown.text


async def test_four_eyes_award_in_the_console_one_admin_twice_then_a_second_one(
    client, trade, admin_token, settings, pool, clock
):
    (dispute,) = await _disputed(client, trade, admin_token, settings, pool, clock,
                                 quantity=2, claimed_fen=200_000)  # fmt: skip
    assert dispute["four_eyes"]
    base = f"/console/disputes/{dispute['id']}"
    escalated = await client.post(f"/v1/disputes/{dispute['id']}/escalation",
                                  json={"forum": "上海仲裁委员会", "note": "申请仲裁"},
                                  headers=bearer(trade["seller"]))  # fmt: skip
    assert escalated.status_code == 200, escalated.text
    award = await _upload(client, admin_token, dispute["id"], "award", "award.pdf",
                          "application/pdf", b"%PDF-1 award")  # fmt: skip
    corrected = await _upload(client, admin_token, dispute["id"], "award", "corrected.pdf",
                              "application/pdf", b"%PDF-1 award, corrected")  # fmt: skip
    operator = (await client.get("/v1/me", headers=bearer(admin_token))).json()["organisation"]
    second_admin = await issue_token(client, admin_token, operator["id"], ["admin"])
    body = {"kind": "release_to_seller", "document_sha256": award["sha256"], "note": "裁决"}
    digest = resolution_digest(
        uuid.UUID(dispute["id"]), uuid.UUID(dispute["trade_id"]), ReleaseToSeller()
    )

    await sign_in(client, admin_token)
    page = await client.get(base)
    assert 'id="award-progress" data-approvals="0" data-needed="2"' in page.text
    assert 'id="award-pending"' not in page.text
    assert "争议所涉金额达到四眼原则门槛" in page.text
    assert 'aria-describedby="award-help"' in page.text
    proposed = await client.post(f"{base}/award", data={**hidden_fields(page.text), **body},
                                 follow_redirects=False)  # fmt: skip
    assert proposed.status_code == 303
    assert proposed.headers["location"] == f"{base}?done=award_pending"
    assert await trade_state(client, trade["buyer"], dispute["trade_id"]) == "disputed"
    shown = await client.get(proposed.headers["location"])
    assert 'id="flash" data-done="award_pending"' in shown.text and digest in shown.text
    assert (f'id="award-pending" data-digest="{digest}" data-document="{award["sha256"]}"'
            in shown.text)  # fmt: skip
    assert 'id="award-progress" data-approvals="1" data-needed="2"' in shown.text
    pending = re.search(r'<dl class="facts" id="award-pending".*?</dl>', shown.text, re.S)
    assert pending is not None and award["sha256"] in pending.group(0)
    assert f"第 {award['index']} 项" in pending.group(0) and "award.pdf" in pending.group(0)
    assert "须由另一位管理员记录相同的裁决" in shown.text and "(我)" in shown.text
    assert 'id="pending"' not in shown.text  # not a reviewer's resolution
    assert 'id="dispute-state" data-state="escalated"' in shown.text
    twice = await client.post(f"{base}/award", data={**hidden_fields(shown.text), **body})
    assert twice.status_code == 409
    assert "a second, different admin must record it" in html.unescape(twice.text)

    await sign_in(client, second_admin)
    second = await client.get(base)
    assert _selected(second.text, "kind") == "release_to_seller"  # the proposal, prefilled
    assert _selected(second.text, "document_sha256") == award["sha256"]
    assert "原样提交即作为第二位管理员完成记录" in second.text and "(我)" not in second.text
    await client.get("/console/language", params={"to": "en", "next": "/console/"})
    english = await client.get(base)
    assert "Pending award" in english.text and "1 / 2 admins recorded" in english.text
    assert "a second, different admin records the same award" in english.text
    other = await client.post(f"{base}/award", data={
        **hidden_fields(second.text), **body, "document_sha256": corrected["sha256"],
    })  # fmt: skip
    assert other.status_code == 409 and 'data-code="resolution_pending"' in other.text
    assert award["sha256"] in other.text
    assert _selected(other.text, "document_sha256") == corrected["sha256"]  # as it was sent
    recorded = await client.post(
        f"{base}/award", data={**hidden_fields(second.text), **body, "note": "复核同意"},
        follow_redirects=False,
    )  # fmt: skip
    assert recorded.status_code == 303
    assert recorded.headers["location"] == f"{base}?done=awarded"
    assert await trade_state(client, trade["buyer"], dispute["trade_id"]) == "settled"
    final = await client.get(recorded.headers["location"])
    assert 'id="flash" data-done="awarded"' in final.text
    assert 'id="award-progress" data-approvals="2" data-needed="2"' in final.text
    assert f'id="award-sha256">{award["sha256"]}<' in final.text
    assert 'id="dispute-state" data-state="closed"' in final.text
