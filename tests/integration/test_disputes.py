"""Disputes over real PostgreSQL and JetStream: opening, evidence, the respondent's deadline,
four-eyes resolution, agreement, escalation and award, withdrawal, and their events."""

from __future__ import annotations

import hashlib
import uuid
from datetime import timedelta

import msgspec
import pytest
from structlog.testing import capture_logs

from exchange.delivery.worker import apply
from exchange.disputes.schemas import RefundBuyer, ReleaseToSeller, resolution_digest
from exchange.platform.canonical import canonical_json
from exchange.platform.events import DisputeEvent
from tests.kit.api import assert_problem, bearer, issue_token
from tests.kit.delivery import grant_service
from tests.kit.disputes import (
    HELD,
    PNG,
    balances,
    open_dispute,
    reserved_trade,
    service,
    trade_state,
)
from tests.kit.settlement import worker


async def dispute_events(pool, dispute_id: str) -> list[tuple[str, str]]:
    """The dispute's events (type, action) in the order of its transitions; every transition
    has its event in the outbox."""
    rows = await pool.fetch("SELECT payload FROM outbox WHERE subject LIKE '%.dispute.%'")
    events = [msgspec.json.decode(r["payload"], type=DisputeEvent) for r in rows]
    mine = sorted((e.type, e.data.action) for e in events if e.data.dispute_id == dispute_id)
    steps = [
        (f"dx.dispute.{r['to_state']}", r["action"])
        for r in await pool.fetch(
            "SELECT to_state, action FROM dispute_transitions WHERE dispute_id = $1 ORDER BY seq",
            uuid.UUID(dispute_id),
        )
    ]
    assert sorted(steps) == mine
    return steps


async def give_grants(pool, clock, settings, trade_id: str) -> None:
    """Hand the trade's executed and reserved events to the delivery room, as its worker
    would: the trade gets its (active) grants."""
    grants = grant_service(pool, clock, settings)
    for event in ("executed", "reserved"):
        subject = settings.subject("trade", event)
        for row in await pool.fetch(
            "SELECT subject, payload FROM outbox WHERE subject = $1", subject
        ):
            if msgspec.json.decode(row["payload"])["data"]["trade_id"] == trade_id:
                async with pool.acquire() as conn, conn.transaction():
                    await apply(conn, grants, row["subject"], bytes(row["payload"]))


# --- opening -----------------------------------------------------------------------------------


async def test_a_buyer_disputes_within_the_acceptance_period_and_not_after(
    client, trade, admin_token, settings, pool, clock
):
    first, second = await reserved_trade(client, trade, admin_token, settings, pool, clock, 2)
    opened = await open_dispute(client, trade["buyer"], first)
    assert opened.status_code == 201, opened.text
    dispute = opened.json()
    assert dispute["state"] == "awaiting_response" and dispute["claimant"] == "buyer"
    assert dispute["held_fen"] == HELD and dispute["grants_suspended"] is True
    assert dispute["four_eyes"] is False and dispute["approvals_needed"] == 1
    assert sorted(dispute["allowed_actions"]) == ["agree", "escalate", "respond", "withdraw"]
    assert await dispute_events(pool, dispute["id"]) == [
        ("dx.dispute.opened", "open"),
        ("dx.dispute.awaiting_response", "notify"),
    ]
    again = await open_dispute(client, trade["buyer"], first, reason="other")
    problem = assert_problem(again, 409, "dispute_open")
    assert problem["dispute_id"] == dispute["id"]
    clock.advance(timedelta(days=7, seconds=1))
    late = await open_dispute(client, trade["buyer"], second)
    problem = assert_problem(late, 409, "acceptance_period_ended")
    assert problem["acceptance_due"] in problem["detail"]
    listed = await client.get(f"/v1/trades/{first}/disputes", headers=bearer(trade["seller"]))
    assert [d["id"] for d in listed.json()["items"]] == [dispute["id"]]
    mine = await client.get("/v1/disputes?state=awaiting_response", headers=bearer(trade["buyer"]))
    assert [d["id"] for d in mine.json()["items"]] == [dispute["id"]]


async def test_the_seller_only_claims_a_breach_of_terms_by_the_buyer_during_the_grant(
    client, trade, admin_token, settings, pool, clock
):
    (trade_id,) = await reserved_trade(client, trade, admin_token, settings, pool, clock)
    wrong = await open_dispute(client, trade["seller"], trade_id, reason="not_delivered")
    assert_problem(wrong, 422, "invalid_input")
    buyer_breach = await open_dispute(client, trade["buyer"], trade_id,
                                      reason="terms_breach_by_buyer")  # fmt: skip
    assert_problem(buyer_breach, 422, "invalid_input")
    no_grant = await open_dispute(client, trade["seller"], trade_id,
                                  reason="terms_breach_by_buyer")  # fmt: skip
    assert_problem(no_grant, 409, "conflict")
    await give_grants(pool, clock, settings, trade_id)
    opened = await open_dispute(client, trade["seller"], trade_id, reason="terms_breach_by_buyer",
                                claimed_fen=0)  # fmt: skip
    assert opened.status_code == 201, opened.text
    assert opened.json()["claimant"] == "seller" and opened.json()["grants_suspended"]
    grants = await pool.fetch("SELECT state, suspended_by FROM grants WHERE trade_id = $1",
                              uuid.UUID(trade_id))  # fmt: skip
    assert grants and all(
        g["state"] == "suspended" and "dispute" in g["suspended_by"] for g in grants
    )


async def test_the_claim_is_at_most_what_is_held_and_only_over_metered_names_periods(
    client, trade, admin_token, settings, pool, clock
):
    (trade_id,) = await reserved_trade(client, trade, admin_token, settings, pool, clock)
    too_much = await open_dispute(client, trade["buyer"], trade_id, claimed_fen=HELD + 1)
    problem = assert_problem(too_much, 422, "invalid_input")
    assert [e["path"] for e in problem["errors"]] == ["claimed_fen"]
    periods = await open_dispute(client, trade["buyer"], trade_id, periods=[1])
    assert [e["path"] for e in assert_problem(periods, 422, "invalid_input")["errors"]] == [
        "periods"
    ]
    fixed = await open_dispute(client, trade["buyer"], trade_id, reason="over_metered",
                               periods=[1])  # fmt: skip
    assert [e["path"] for e in assert_problem(fixed, 422, "invalid_input")["errors"]] == ["reason"]
    negative = await open_dispute(client, trade["buyer"], trade_id, claimed_fen=-1)
    assert negative.status_code == 422
    exact = await open_dispute(client, trade["buyer"], trade_id, claimed_fen=HELD)
    assert exact.status_code == 201, exact.text
    assert exact.json()["four_eyes"] is False  # 1,010,000 held: below the tests' 2,000,000


async def test_four_eyes_follows_what_is_at_stake_not_only_the_claim(
    client, trade, admin_token, settings, pool, clock
):
    """A claim of 1 fen on a trade holding 2,020,000 still needs two reviewers: one alone
    could otherwise refund (or release) all of it."""
    (trade_id,) = await reserved_trade(client, trade, admin_token, settings, pool, clock,
                                       quantity=2)  # fmt: skip
    small = await open_dispute(client, trade["buyer"], trade_id, claimed_fen=1)
    assert small.status_code == 201, small.text
    assert small.json()["four_eyes"] is True and small.json()["approvals_needed"] == 2


async def test_disputes_are_for_the_parties_only(client, trade, admin_token, settings, pool, clock):
    (trade_id,) = await reserved_trade(client, trade, admin_token, settings, pool, clock)
    other = trade["other"]  # another seller: neither party
    assert (await open_dispute(client, other, trade_id,
                               reason="terms_breach_by_buyer")).status_code == 404  # fmt: skip
    dispute = (await open_dispute(client, trade["buyer"], trade_id)).json()
    base = f"/v1/disputes/{dispute['id']}"
    sha = hashlib.sha256(PNG).hexdigest()
    added = await client.post(f"{base}/evidence?type=screenshot&name=table.png", content=PNG,
                              headers={**bearer(trade["buyer"]), "content-type": "image/png"})  # fmt: skip
    assert added.status_code == 201, added.text
    for method, path, body in (
        ("GET", f"/v1/trades/{trade_id}/disputes", None),
        ("GET", base, None),
        ("GET", f"{base}/evidence", None),
        ("GET", f"{base}/evidence/{sha}", None),
        ("GET", f"{base}/bundle", None),
        ("POST", f"{base}/response", {"statement": "x"}),
        ("POST", f"{base}/agreement", {"resolution": {"kind": "refund_buyer"},
                                       "custodial": True}),
        ("POST", f"{base}/escalation", {"forum": "上海仲裁委员会", "note": "x"}),
        ("POST", f"{base}/withdrawal", None),
    ):  # fmt: skip
        response = await client.request(method, path, json=body, headers=bearer(other))
        assert response.status_code == 404, (method, path, response.text)
    upload = await client.post(f"{base}/evidence?type=other&name=x.txt", content=b"x",
                               headers={**bearer(other), "content-type": "text/plain"})  # fmt: skip
    assert upload.status_code == 404
    listed = await client.get("/v1/disputes", headers=bearer(other))
    assert listed.json()["items"] == []
    for staff in (trade["alice"], admin_token):
        seen = await client.get(base, headers=bearer(staff))
        assert seen.status_code == 200 and seen.json()["id"] == dispute["id"]
    assert (await client.get(base, headers=bearer(trade["seller"]))).status_code == 200


# --- evidence ----------------------------------------------------------------------------------


async def test_evidence_is_content_addressed_typed_and_size_limited(
    client, trade, admin_token, settings, pool, clock
):
    (trade_id,) = await reserved_trade(client, trade, admin_token, settings, pool, clock)
    dispute = (await open_dispute(client, trade["buyer"], trade_id)).json()
    base = f"/v1/disputes/{dispute['id']}/evidence"
    png = {**bearer(trade["buyer"]), "content-type": "image/png"}
    first = await client.post(f"{base}?type=screenshot&name=table.png", content=PNG, headers=png)
    assert first.status_code == 201, first.text
    item = first.json()
    sha = hashlib.sha256(PNG).hexdigest()
    assert (item["sha256"], item["size"], item["submitter"]) == (sha, len(PNG), "buyer")
    assert item["ledger_seq"] >= 0
    stored = settings.state_dir / "evidence" / sha[:2] / sha
    assert stored.read_bytes() == PNG
    again = await client.post(f"{base}?type=report&name=again.png", content=PNG, headers=png)
    assert again.status_code == 200 and again.json() == item
    text = {**bearer(trade["seller"]), "content-type": "text/plain; charset=utf-8"}
    answer = await client.post(f"{base}?type=statement&name=答辩.txt",
                               content="已按约定交付".encode(), headers=text)  # fmt: skip
    assert answer.status_code == 201, answer.text
    assert answer.json()["submitter"] == "seller" and answer.json()["media_type"] == "text/plain"
    listed = (await client.get(base, headers=bearer(trade["seller"]))).json()
    assert [i["sha256"] for i in listed["items"]][-2:] == [sha, answer.json()["sha256"]]
    assert [i["index"] for i in listed["items"]] == list(range(len(listed["items"])))
    body = await client.get(f"{base}/{sha}", headers=bearer(trade["seller"]))
    assert body.status_code == 200 and body.content == PNG
    assert body.headers["content-type"] == "image/png"
    assert (
        await client.get(f"{base}/{'0' * 64}", headers=bearer(trade["buyer"]))
    ).status_code == 404
    assert (await client.get(f"{base}/not-hex", headers=bearer(trade["buyer"]))).status_code == 404
    html = await client.post(f"{base}?type=other&name=x.html", content=b"<p>",
                             headers={**bearer(trade["buyer"]), "content-type": "text/html"})  # fmt: skip
    assert_problem(html, 422, "invalid_input")
    big = b"\0" * (settings.dispute_evidence_max_bytes + 1)
    too_big = await client.post(f"{base}?type=data_sample&name=big.bin", content=big,
                                headers={**bearer(trade["buyer"]),
                                         "content-type": "application/octet-stream"})  # fmt: skip
    assert_problem(too_big, 413, "evidence_too_large")
    assert hashlib.sha256(big).hexdigest() not in {
        i["sha256"]
        for i in (await client.get(base, headers=bearer(trade["buyer"]))).json()["items"]
    }
    staff_pdf = {**bearer(admin_token), "content-type": "application/pdf"}
    staff_statement = await client.post(f"{base}?type=statement&name=s.pdf", content=b"%PDF-1",
                                        headers=staff_pdf)  # fmt: skip
    assert_problem(staff_statement, 422, "invalid_input")
    award = await client.post(f"{base}?type=award&name=award.pdf", content=b"%PDF-1 award",
                              headers=staff_pdf)  # fmt: skip
    assert award.status_code == 201 and award.json()["submitter"] == "staff"
    buyer_award = await client.post(f"{base}?type=award&name=a.pdf", content=b"%PDF-2",
                                    headers={**png, "content-type": "application/pdf"})  # fmt: skip
    assert_problem(buyer_award, 422, "invalid_input")


# --- the respondent's deadline -----------------------------------------------------------------


async def test_the_respondents_deadline_passing_moves_the_case_to_review(
    client, trade, admin_token, settings, pool, clock
):
    first, second = await reserved_trade(client, trade, admin_token, settings, pool, clock, 2)
    silent = (await open_dispute(client, trade["buyer"], first)).json()
    answered = (await open_dispute(client, trade["buyer"], second)).json()
    buyer_answer = await client.post(f"/v1/disputes/{answered['id']}/response",
                                     json={"statement": "x"}, headers=bearer(trade["buyer"]))  # fmt: skip
    assert buyer_answer.status_code == 403  # the claimant does not answer its own claim
    response = await client.post(f"/v1/disputes/{answered['id']}/response",
                                 json={"statement": "已交付,见日志"},
                                 headers=bearer(trade["seller"]))  # fmt: skip
    assert response.status_code == 200 and response.json()["state"] == "under_review"
    disputes = service(pool, clock, settings)
    assert await disputes.move_due() == 0
    clock.advance(timedelta(days=settings.dispute_response_days, seconds=1))
    assert await disputes.move_due() == 1
    assert await disputes.move_due() == 0
    moved = await client.get(f"/v1/disputes/{silent['id']}", headers=bearer(trade["buyer"]))
    assert moved.json()["state"] == "under_review" and moved.json()["response"] is None
    assert (await dispute_events(pool, silent["id"]))[-1] == (
        "dx.dispute.under_review",
        "respondent_deadline",
    )


# --- resolution by staff -----------------------------------------------------------------------


async def test_four_eyes_one_reviewer_twice_is_refused_two_reviewers_resolve(
    client, trade, admin_token, settings, pool, clock
):
    (trade_id,) = await reserved_trade(client, trade, admin_token, settings, pool, clock,
                                       quantity=2)  # fmt: skip
    dispute = (await open_dispute(client, trade["buyer"], trade_id, claimed_fen=200_000)).json()
    assert dispute["four_eyes"] and dispute["approvals_needed"] == 2
    base = f"/v1/disputes/{dispute['id']}"
    release = {"resolution": {"kind": "release_to_seller"}, "note": "交付记录完整"}
    early = await client.post(f"{base}/resolution", json=release, headers=bearer(trade["alice"]))
    assert_problem(early, 409, "illegal_transition")  # still awaiting the seller's answer
    await client.post(f"{base}/response", json={"statement": "已交付"},
                      headers=bearer(trade["seller"]))  # fmt: skip
    seller_try = await client.post(f"{base}/resolution", json=release,
                                   headers=bearer(trade["seller"]))  # fmt: skip
    assert seller_try.status_code == 403
    proposed = await client.post(f"{base}/resolution", json=release,
                                 headers=bearer(trade["alice"]))  # fmt: skip
    assert proposed.status_code == 202, proposed.text
    digest = resolution_digest(uuid.UUID(dispute["id"]), uuid.UUID(trade_id), ReleaseToSeller())
    assert proposed.json()["state"] == "under_review"
    assert proposed.json()["pending"]["digest"] == digest
    twice = await client.post(f"{base}/resolution", json=release, headers=bearer(trade["alice"]))
    assert twice.status_code == 409
    other = await client.post(f"{base}/resolution",
                              json={"resolution": {"kind": "refund_buyer"}, "note": "x"},
                              headers=bearer(trade["bob"]))  # fmt: skip
    assert assert_problem(other, 409, "resolution_pending")["pending_digest"] == digest
    # The proposer may change its own pending proposal (it then waits for a second reviewer).
    refund = {"resolution": {"kind": "refund_buyer"}, "note": "改为退款"}
    replaced = await client.post(f"{base}/resolution", json=refund, headers=bearer(trade["alice"]))
    assert replaced.status_code == 202, replaced.text
    assert replaced.json()["pending"]["digest"] != digest
    back = await client.post(f"{base}/resolution", json=release, headers=bearer(trade["alice"]))
    assert back.status_code == 202 and back.json()["pending"]["digest"] == digest
    resolved = await client.post(f"{base}/resolution", json=release, headers=bearer(trade["bob"]))
    assert resolved.status_code == 200, resolved.text
    body = resolved.json()
    assert body["state"] == "closed" and body["resolution"] == {"kind": "release_to_seller"}
    assert body["resolution_digest"] == digest and body["closed_at"] is not None
    assert body["money"]["state"] == "settled" and body["money"]["refund_fen"] == 0
    assert await trade_state(client, trade["buyer"], trade_id) == "settled"
    repeat = await client.post(f"{base}/resolution", json=release, headers=bearer(admin_token))
    assert_problem(repeat, 409, "illegal_transition")
    assert [t for t, _ in await dispute_events(pool, dispute["id"])] == [
        "dx.dispute.opened", "dx.dispute.awaiting_response", "dx.dispute.under_review",
        "dx.dispute.resolved", "dx.dispute.closed",
    ]  # fmt: skip
    grants_lifted = await pool.fetchval(
        "SELECT count(*) FROM grants WHERE trade_id = $1 AND 'dispute' = ANY(suspended_by)",
        uuid.UUID(trade_id),
    )
    assert grants_lifted == 0


async def test_below_the_four_eyes_amount_one_reviewer_resolves(
    client, trade, admin_token, settings, pool, clock
):
    (trade_id,) = await reserved_trade(client, trade, admin_token, settings, pool, clock)
    dispute = (await open_dispute(client, trade["buyer"], trade_id, claimed_fen=99_999)).json()
    base = f"/v1/disputes/{dispute['id']}"
    clock.advance(timedelta(days=8))
    assert await service(pool, clock, settings).move_due() == 1
    past = await client.post(f"{base}/resolution", headers=bearer(trade["alice"]),
                             json={"resolution": {"kind": "redeliver",
                                                  "by": "2020-01-01T00:00:00Z"}, "note": "x"})  # fmt: skip
    assert_problem(past, 422, "invalid_input")
    refund = await client.post(f"{base}/resolution", headers=bearer(trade["alice"]),
                               json={"resolution": {"kind": "refund_buyer"}, "note": "未交付"})  # fmt: skip
    assert refund.status_code == 200, refund.text
    assert refund.json()["money"]["state"] == "voided"
    assert refund.json()["money"]["refund_fen"] == HELD
    assert await trade_state(client, trade["buyer"], trade_id) == "voided"


# --- agreement, escalation, withdrawal ----------------------------------------------------------


async def test_both_parties_sign_the_same_resolution_and_it_is_settled_by_agreement(
    client, trade, admin_token, settings, pool, clock
):
    (trade_id,) = await reserved_trade(client, trade, admin_token, settings, pool, clock)
    key = await client.post("/v1/keys/custodial", headers=bearer(trade["seller"]))
    assert key.status_code == 201, key.text
    dispute = (await open_dispute(client, trade["buyer"], trade_id)).json()
    base = f"/v1/disputes/{dispute['id']}"
    refund = {"resolution": {"kind": "refund_buyer"}, "custodial": True}
    digest = resolution_digest(uuid.UUID(dispute["id"]), uuid.UUID(trade_id), RefundBuyer())
    buyer = await client.post(f"{base}/agreement", json=refund, headers=bearer(trade["buyer"]))
    assert buyer.status_code == 200, buyer.text
    assert buyer.json()["state"] == "awaiting_response"
    assert [(s["party"], s["digest"], s["kind"]) for s in buyer.json()["signatures"]] == [
        ("buyer", digest, "custodial")
    ]
    signer = trade["signers"]["seller"]
    release = {"kind": "release_to_seller"}
    bad = await client.post(f"{base}/agreement", headers=bearer(trade["seller"]),
                            json={"resolution": release,
                                  "jws": signer.detached(signer.kid, digest.encode())})  # fmt: skip
    assert bad.status_code == 422, bad.text  # signed another digest than the one it names
    other = await client.post(f"{base}/agreement", headers=bearer(trade["seller"]), json={
        "resolution": release,
        "jws": signer.detached(signer.kid, resolution_digest(
            uuid.UUID(dispute["id"]), uuid.UUID(trade_id), ReleaseToSeller()).encode()),
    })  # fmt: skip
    assert other.status_code == 200 and other.json()["state"] == "awaiting_response"
    agreed = await client.post(f"{base}/agreement", json=refund, headers=bearer(trade["seller"]))
    assert agreed.status_code == 200, agreed.text
    body = agreed.json()
    assert body["state"] == "closed" and body["resolved_by"] == "agreement"
    assert body["resolution_digest"] == digest and body["money"]["state"] == "voided"
    assert [t for t, _ in await dispute_events(pool, dispute["id"])][-2:] == [
        "dx.dispute.settled_by_agreement", "dx.dispute.closed",
    ]  # fmt: skip


async def test_escalation_keeps_escrow_until_staff_record_the_award(
    client, trade, admin_token, settings, pool, clock
):
    (trade_id,) = await reserved_trade(client, trade, admin_token, settings, pool, clock)
    dispute = (await open_dispute(client, trade["buyer"], trade_id)).json()
    assert dispute["four_eyes"] is False  # below the amount: one admin records the award
    base = f"/v1/disputes/{dispute['id']}"
    escalated = await client.post(f"{base}/escalation", headers=bearer(trade["seller"]),
                                  json={"forum": "上海仲裁委员会", "note": "申请仲裁"})  # fmt: skip
    assert escalated.status_code == 200, escalated.text
    assert escalated.json()["state"] == "escalated"
    assert escalated.json()["escalation"]["forum"] == "上海仲裁委员会"
    clock.advance(timedelta(days=8))
    async with worker(settings, pool, clock) as w:
        await w.service.settle_due()
    assert await trade_state(client, trade["buyer"], trade_id) == "disputed"  # awaits H1's hold
    resolution = await client.post(f"{base}/resolution", headers=bearer(trade["alice"]),
                                   json={"resolution": {"kind": "refund_buyer"}, "note": "x"})  # fmt: skip
    assert_problem(resolution, 409, "illegal_transition")
    award_body = {"resolution": {"kind": "release_to_seller"},
                  "document_sha256": hashlib.sha256(b"%PDF award").hexdigest(), "note": "裁决"}  # fmt: skip
    missing = await client.post(f"{base}/award", json=award_body, headers=bearer(admin_token))
    assert_problem(missing, 422, "invalid_input")
    uploaded = await client.post(f"{base}/evidence?type=award&name=award.pdf",
                                 content=b"%PDF award",
                                 headers={**bearer(admin_token),
                                          "content-type": "application/pdf"})  # fmt: skip
    assert uploaded.status_code == 201, uploaded.text
    reviewer_award = await client.post(f"{base}/award", json=award_body,
                                       headers=bearer(trade["alice"]))  # fmt: skip
    assert reviewer_award.status_code == 403
    recorded = await client.post(f"{base}/award", json=award_body, headers=bearer(admin_token))
    assert recorded.status_code == 200, recorded.text
    body = recorded.json()
    assert (
        body["state"] == "closed"
        and body["escalation"]["award_sha256"] == (award_body["document_sha256"])
    )
    assert body["money"]["state"] == "settled"


async def test_four_eyes_an_award_at_the_amount_waits_for_a_second_admin(
    client, trade, admin_token, settings, pool, clock
):
    """An award moves the money as a resolution does: at or above the four-eyes amount the
    first admin's award is a proposal that moves nothing; the same admin again is a 409, and so
    is another admin's award on another document; a second admin naming the same resolution and
    document records it, and the money moves once. A reviewer's pending resolution from before
    the escalation counts for nothing here (and the same token may take part in both stages)."""
    (trade_id,) = await reserved_trade(client, trade, admin_token, settings, pool, clock,
                                       quantity=2)  # fmt: skip
    dispute = (await open_dispute(client, trade["buyer"], trade_id, claimed_fen=200_000)).json()
    assert dispute["four_eyes"] and dispute["approvals_needed"] == 2
    base = f"/v1/disputes/{dispute['id']}"
    operator = (await client.get("/v1/me", headers=bearer(admin_token))).json()["organisation"]
    second = await issue_token(client, admin_token, operator["id"], ["admin"])
    await client.post(f"{base}/response", json={"statement": "已交付"},
                      headers=bearer(trade["seller"]))  # fmt: skip
    release = {"kind": "release_to_seller"}
    reviewed = await client.post(f"{base}/resolution", json={"resolution": release, "note": "x"},
                                 headers=bearer(admin_token))  # fmt: skip
    assert reviewed.status_code == 202 and reviewed.json()["pending"]["stage"] == "review"
    escalated = await client.post(f"{base}/escalation", headers=bearer(trade["seller"]),
                                  json={"forum": "上海仲裁委员会", "note": "申请仲裁"})  # fmt: skip
    assert escalated.status_code == 200 and escalated.json()["pending"] is None
    documents = []
    for pdf in (b"%PDF award", b"%PDF award, corrected"):
        uploaded = await client.post(f"{base}/evidence?type=award&name=award.pdf", content=pdf,
                                     headers={**bearer(admin_token),
                                              "content-type": "application/pdf"})  # fmt: skip
        assert uploaded.status_code == 201, uploaded.text
        documents.append(uploaded.json()["sha256"])
    award, other_document = documents
    seller_before = await balances(client, trade["seller"])
    buyer_before = await balances(client, trade["buyer"])
    assert buyer_before[1] == 2 * HELD

    body = {"resolution": release, "document_sha256": award, "note": "裁决"}
    digest = resolution_digest(uuid.UUID(dispute["id"]), uuid.UUID(trade_id), ReleaseToSeller())
    proposed = await client.post(f"{base}/award", json=body, headers=bearer(admin_token))
    assert proposed.status_code == 202, proposed.text
    view = proposed.json()
    assert view["state"] == "escalated" and view["money"] is None and view["resolution"] is None
    assert view["escalation"]["award_sha256"] is None
    pending = view["pending"]
    assert (pending["stage"], pending["digest"], pending["document_sha256"]) == (
        "award", digest, award,
    )  # fmt: skip
    assert pending["resolution"] == release and pending["proposed_by"].startswith("token:")
    got = (await client.get(base, headers=bearer(trade["buyer"]))).json()
    assert got["pending"] == pending  # the parties see it too
    assert await trade_state(client, trade["buyer"], trade_id) == "disputed"
    assert await balances(client, trade["seller"]) == seller_before
    assert await balances(client, trade["buyer"]) == buyer_before

    twice = await client.post(f"{base}/award", json=body, headers=bearer(admin_token))
    problem = assert_problem(twice, 409, "conflict")
    assert "a second, different admin must record it" in problem["detail"]
    assert (problem["digest"], problem["document_sha256"]) == (digest, award)
    other = await client.post(f"{base}/award", headers=bearer(second),
                              json=body | {"document_sha256": other_document})  # fmt: skip
    problem = assert_problem(other, 409, "resolution_pending")
    assert (problem["pending_digest"], problem["pending_document_sha256"]) == (digest, award)
    assert digest in problem["detail"] and award in problem["detail"]
    refund = await client.post(f"{base}/award", headers=bearer(second),
                               json=body | {"resolution": {"kind": "refund_buyer"}})  # fmt: skip
    assert assert_problem(refund, 409, "resolution_pending")["pending_digest"] == digest
    # The proposer may replace its own proposal (another document, say) and it waits again.
    replaced = await client.post(f"{base}/award", headers=bearer(admin_token),
                                 json=body | {"document_sha256": other_document})  # fmt: skip
    assert replaced.status_code == 202, replaced.text
    assert replaced.json()["pending"]["document_sha256"] == other_document
    back = await client.post(f"{base}/award", json=body, headers=bearer(admin_token))
    assert back.status_code == 202 and back.json()["pending"]["document_sha256"] == award
    assert await balances(client, trade["buyer"]) == buyer_before

    recorded = await client.post(f"{base}/award", json=body | {"note": "复核同意"},
                                 headers=bearer(second))  # fmt: skip
    assert recorded.status_code == 200, recorded.text
    done = recorded.json()
    assert done["state"] == "closed" and done["resolution_digest"] == digest
    assert done["resolved_by"] == f"award:{award}" and done["pending"] is None
    assert done["escalation"]["award_sha256"] == award
    assert done["money"]["state"] == "settled" and done["money"]["refund_fen"] == 0
    assert await trade_state(client, trade["buyer"], trade_id) == "settled"
    seller_after = await balances(client, trade["seller"])
    assert seller_after[0] == seller_before[0] + done["money"]["seller_fen"]
    assert await balances(client, trade["buyer"]) == (buyer_before[0], 0)
    again = await client.post(f"{base}/award", json=body, headers=bearer(admin_token))
    assert_problem(again, 409, "illegal_transition")
    assert await balances(client, trade["seller"]) == seller_after  # moved once
    audit = await pool.fetch(
        "SELECT action, detail FROM audit_log WHERE subject_id = $1 ORDER BY id",
        dispute["id"],
    )
    staff_steps = [
        (a["action"], a["detail"].get("stage"))
        for a in audit
        if a["action"].startswith(("dispute.award", "dispute.resolution", "dispute.proposal"))
    ]
    assert staff_steps == [
        ("dispute.resolution_approved", "review"),
        ("dispute.award_proposed", "award"),
        ("dispute.award_proposal_replaced", "award"),
        ("dispute.award_proposal_replaced", "award"),
        ("dispute.award_approved", "award"),
        ("dispute.award_recorded", None),
    ]
    assert [t for t, _ in await dispute_events(pool, dispute["id"])][-3:] == [
        "dx.dispute.escalated", "dx.dispute.resolved", "dx.dispute.closed",
    ]  # fmt: skip


async def test_the_claimant_withdraws_and_the_hold_is_released(
    client, trade, admin_token, settings, pool, clock
):
    (trade_id,) = await reserved_trade(client, trade, admin_token, settings, pool, clock)
    dispute = (await open_dispute(client, trade["buyer"], trade_id)).json()
    base = f"/v1/disputes/{dispute['id']}"
    by_seller = await client.post(f"{base}/withdrawal", headers=bearer(trade["seller"]))
    assert by_seller.status_code == 403
    withdrawn = await client.post(f"{base}/withdrawal", headers=bearer(trade["buyer"]))
    assert withdrawn.status_code == 200, withdrawn.text
    assert withdrawn.json()["state"] == "closed" and withdrawn.json()["money"] is None
    assert await trade_state(client, trade["buyer"], trade_id) == "reserved"
    late = await client.post(f"{base}/evidence?type=other&name=x.txt", content=b"late",
                             headers={**bearer(trade["buyer"]), "content-type": "text/plain"})  # fmt: skip
    assert_problem(late, 409, "conflict")
    reopened = await open_dispute(client, trade["buyer"], trade_id, reason="other")
    assert reopened.status_code == 201, reopened.text  # closed ones do not count


async def test_a_withdrawn_dispute_gives_the_buyer_back_the_time_it_had_to_inspect(
    client, trade, admin_token, settings, pool, clock
):
    """Opened with one day of the seven left, withdrawn three days later: the buyer has that
    day again from the withdrawal, so nothing is posted until it passes. While the dispute
    holds the trade, the parties cannot cancel it either: the resolution is the way out."""
    (trade_id,) = await reserved_trade(client, trade, admin_token, settings, pool, clock)
    clock.advance(timedelta(days=6))
    dispute = (await open_dispute(client, trade["buyer"], trade_id)).json()
    for party in ("buyer", "seller"):
        cancel = await client.post(f"/v1/trades/{trade_id}/cancel", json={"reason": "协商"},
                                   headers=bearer(trade[party]))  # fmt: skip
        assert_problem(cancel, 409, "illegal_transition")
    clock.advance(timedelta(days=3))
    withdrawn = await client.post(f"/v1/disputes/{dispute['id']}/withdrawal",
                                  headers=bearer(trade["buyer"]))  # fmt: skip
    assert withdrawn.status_code == 200, withdrawn.text
    clock.advance(timedelta(hours=23))
    async with worker(settings, pool, clock) as w:
        assert await w.service.settle_due() == 0  # a day from the withdrawal: not yet
    assert await trade_state(client, trade["buyer"], trade_id) == "reserved"
    clock.advance(timedelta(hours=1, seconds=1))
    async with worker(settings, pool, clock) as w:
        assert await w.service.settle_due() == 1
    assert await trade_state(client, trade["buyer"], trade_id) == "settled"


# --- what awaits settlement (H1) and the evidence exports (H4) ---------------------------------


async def test_nothing_is_posted_while_a_dispute_is_open_past_the_acceptance_period(
    client, trade, admin_token, settings, pool, clock
):
    (trade_id,) = await reserved_trade(client, trade, admin_token, settings, pool, clock)
    dispute = (await open_dispute(client, trade["buyer"], trade_id)).json()
    assert await trade_state(client, trade["buyer"], trade_id) == "disputed"
    clock.advance(timedelta(days=7, seconds=1))
    async with worker(settings, pool, clock) as w:
        assert await w.service.settle_due() == 0
    assert await trade_state(client, trade["buyer"], trade_id) == "disputed"
    extended = await client.post(
        f"/v1/disputes/{dispute['id']}/agreement", headers=bearer(trade["buyer"]),
        json={"resolution": {"kind": "extend_acceptance", "days": 3}, "custodial": True},
    )  # fmt: skip
    assert extended.status_code == 200, extended.text


async def test_a_split_pays_the_refund_to_the_buyer_and_the_rest_by_the_rule(
    client, trade, admin_token, settings, pool, clock
):
    (trade_id,) = await reserved_trade(client, trade, admin_token, settings, pool, clock)
    dispute = (await open_dispute(client, trade["buyer"], trade_id, claimed_fen=99_000)).json()
    base = f"/v1/disputes/{dispute['id']}"
    await client.post(f"{base}/response", json={"statement": "x"},
                      headers=bearer(trade["seller"]))  # fmt: skip
    whole = await client.post(f"{base}/resolution", headers=bearer(trade["alice"]),
                              json={"resolution": {"kind": "split", "refund_fen": HELD},
                                    "note": "x"})  # fmt: skip
    assert_problem(whole, 422, "invalid_input")
    split = await client.post(f"{base}/resolution", headers=bearer(trade["alice"]),
                              json={"resolution": {"kind": "split", "refund_fen": 333_300},
                                    "note": "部分不符"})  # fmt: skip
    assert split.status_code == 200, split.text
    money = split.json()["money"]
    assert money["state"] == "split" and money["refund_fen"] == 333_300
    assert money["refund_fen"] + money["seller_fen"] + money["fee_fen"] == HELD
    assert await trade_state(client, trade["buyer"], trade_id) == "split"


async def test_the_exchange_attaches_its_evidence_and_the_bundle_verifies(
    client, trade, admin_token, settings, pool, clock
):
    from exchange.disputes.bundle import verify_bundle
    from exchange.platform.signing import jwks

    (trade_id,) = await reserved_trade(client, trade, admin_token, settings, pool, clock)
    dispute = (await open_dispute(client, trade["buyer"], trade_id)).json()
    base = f"/v1/disputes/{dispute['id']}"
    items = (await client.get(f"{base}/evidence", headers=bearer(trade["buyer"]))).json()["items"]
    kinds = {i["kind"] for i in items}
    assert {"contract", "ledger_receipt"} <= kinds and {i["submitter"] for i in items} == {
        "exchange"
    }
    await client.post(f"{base}/evidence?type=screenshot&name=t.png", content=PNG,
                      headers={**bearer(trade["buyer"]), "content-type": "image/png"})  # fmt: skip
    tar = await client.get(f"{base}/bundle", headers=bearer(trade["seller"]))
    assert tar.status_code == 200 and tar.headers["content-type"] == "application/x-tar"
    assert int(tar.headers["content-length"]) == len(tar.content)
    assert tar.headers["content-disposition"] == (
        f'attachment; filename="dispute-{dispute["id"]}.tar"'
    )
    verified = verify_bundle(tar.content, await jwks(pool))
    assert verified is not None


async def test_the_bundle_holds_what_the_gateway_served_and_the_resolution_and_verifies(
    client, trade, admin_token, settings, pool, clock
):
    """End to end: calls through the gateway, a dispute, uploads by both parties, a split;
    the bundle verifies offline with the JWKS alone, its usage records are the very calls the
    gateway served (the SHA-256 of each body the buyer received), the ledger part registers
    every item, the resolution's digest and the money; a changed byte in the usage item fails
    naming it."""
    import io
    import tarfile

    from exchange.disputes.bundle import BundleInvalid, verify_bundle
    from exchange.platform.signing import jwks
    from tests.kit.gateway import bearer as gateway_bearer
    from tests.kit.gateway import gateway_in_process, upstream

    (trade_id,) = await reserved_trade(client, trade, admin_token, settings, pool, clock)
    await give_grants(pool, clock, settings, trade_id)
    grant_id = uuid.uuid5(uuid.UUID(trade_id), "api")
    grant = await client.get(f"/v1/grants/{grant_id}", headers=bearer(trade["buyer"]))
    assert grant.status_code == 200 and grant.json()["state"] == "active", grant.text
    issued = await client.post(f"/v1/grants/{grant_id}/tokens", headers=bearer(trade["buyer"]))
    assert issued.status_code == 201, issued.text
    async with upstream() as seller:
        put = await client.put(f"/v1/products/{grant.json()['product_id']}/upstream",
                               json={"base_url": seller.url},
                               headers=bearer(trade["seller"]))  # fmt: skip
        assert put.status_code in (200, 201), put.text
        async with gateway_in_process(settings) as (_, gateway):
            answers = []
            for tail in ("v1/rows?x=1", "v1/rows/2", "v1/other"):
                answer = await gateway.get(f"/gateway/{grant_id}/{tail}",
                                           headers=gateway_bearer(issued.json()["token"]))  # fmt: skip
                assert answer.status_code == 200, answer.text
                answers.append(answer)

    opened = await open_dispute(client, trade["buyer"], trade_id, reason="not_delivered")
    assert opened.status_code == 201, opened.text
    dispute = opened.json()
    assert dispute["grants_suspended"] is False  # not delivered: the seller may still deliver
    base = f"/v1/disputes/{dispute['id']}"
    buyer_upload = await client.post(
        f"{base}/evidence?type=screenshot&name=t.png", content=PNG,
        headers={**bearer(trade["buyer"]), "content-type": "image/png"},
    )  # fmt: skip
    seller_upload = await client.post(
        f"{base}/evidence?type=correspondence&name=mail.txt", content="已按约交付".encode(),
        headers={**bearer(trade["seller"]), "content-type": "text/plain"},
    )  # fmt: skip
    assert buyer_upload.status_code == 201 and seller_upload.status_code == 201
    responded = await client.post(f"{base}/response", json={"statement": "已交付,见往来邮件"},
                                  headers=bearer(trade["seller"]))  # fmt: skip
    assert responded.status_code == 200, responded.text
    split = await client.post(f"{base}/resolution", headers=bearer(trade["alice"]),
                              json={"resolution": {"kind": "split", "refund_fen": 30_000},
                                    "note": "部分未交付"})  # fmt: skip
    assert split.status_code == 200, split.text
    resolved = split.json()

    tar = await client.get(f"{base}/bundle", headers=bearer(trade["buyer"]))
    assert tar.status_code == 200, tar.text
    keys = await jwks(pool)
    verified = verify_bundle(tar.content, keys)
    assert verified.dispute_id == dispute["id"] and verified.trade_id == trade_id
    items = verified.manifest["items"]
    by_name = {i["name"]: i for i in items}
    assert {
        "contract.json",
        "listing.json",
        "grants.json",
        "tokens.json",
        "usage-records.jsonl",
        "ledger-receipt.json",
        "t.png",
        "mail.txt",
    } <= set(by_name)
    assert by_name["t.png"]["submitter"] == "buyer"
    assert by_name["mail.txt"]["submitter"] == "seller"
    assert by_name["t.png"]["sha256"] == hashlib.sha256(PNG).hexdigest()

    with tarfile.open(fileobj=io.BytesIO(tar.content), mode="r:") as archive:

        def member(name: str) -> bytes:
            extracted = archive.extractfile(name)
            assert extracted is not None
            return extracted.read()

        usage = [msgspec.json.decode(line) for line in
                 member(by_name["usage-records.jsonl"]["path"]).splitlines()]  # fmt: skip
        ledger_part = msgspec.json.decode(member("ledger.json"))
    served = {a.headers["dataex-usage-id"]: hashlib.sha256(a.content).hexdigest()
              for a in answers}  # fmt: skip
    assert {r["id"]: r["detail"]["sha256"] for r in usage} == served
    assert all(r["grant_id"] == str(grant_id) for r in usage)

    entries = [e["entry"] for e in ledger_part["entries"]]
    evidence = {e["statement_digest"] for e in entries if e["step"] == "evidence"}
    assert evidence == {f"sha256:{i['sha256']}" for i in items}
    [resolution] = [e for e in entries if e["step"] == "resolution"]
    assert resolution["statement_digest"] == resolved["resolution_digest"]
    [money] = [e for e in entries if e["step"] == "split"]
    assert money["refund_fen"] == 30_000 and money["dispute_id"] == dispute["id"]
    assert money["price_fen"] + money["fee_fen"] + money["refund_fen"] == HELD

    # The resolution's or the money's entry dropped from ledger.json (the rest intact and
    # canonical): the verifier names what is missing.
    for step, named in (("resolution", "resolution"), ("split", "money")):
        kept = {**ledger_part, "entries": [e for e in ledger_part["entries"]
                                            if e["entry"]["step"] != step]}  # fmt: skip
        with pytest.raises(BundleInvalid, match=f"the dispute's {named}"):
            verify_bundle(_replace_member(tar.content, "ledger.json", canonical_json(kept)), keys)

    # One byte of the usage item changed: the verifier names it.
    data = bytearray(tar.content)
    with tarfile.open(fileobj=io.BytesIO(tar.content), mode="r:") as archive:
        offset = archive.getmember(by_name["usage-records.jsonl"]["path"]).offset_data
    data[offset + 10] ^= 0x01
    try:
        verify_bundle(bytes(data), keys)
    except BundleInvalid as error:
        assert "usage-records.jsonl" in str(error), error
    else:
        raise AssertionError("a changed usage record verified")


def _replace_member(archive: bytes, name: str, body: bytes) -> bytes:
    """The same tar with one member's bytes replaced, every member in its place."""
    import io
    import tarfile

    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(archive), mode="r:") as source,
        tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as target,
    ):
        for member in source.getmembers():
            data = body if member.name == name else source.extractfile(member).read()  # type: ignore[union-attr]
            member.size = len(data)
            target.addfile(member, io.BytesIO(data))
    return out.getvalue()


async def test_a_damaged_evidence_store_is_a_problem_naming_the_item_not_a_bundle(
    client, trade, admin_token, settings, pool, clock
):
    (trade_id,) = await reserved_trade(client, trade, admin_token, settings, pool, clock)
    dispute = (await open_dispute(client, trade["buyer"], trade_id)).json()
    base = f"/v1/disputes/{dispute['id']}"
    png = PNG + uuid.uuid4().bytes  # its own bytes: the store is shared by content
    added = await client.post(f"{base}/evidence?type=screenshot&name=t.png", content=png,
                              headers={**bearer(trade["buyer"]), "content-type": "image/png"})  # fmt: skip
    assert added.status_code == 201, added.text
    sha = hashlib.sha256(png).hexdigest()
    stored = settings.state_dir / "evidence" / sha[:2] / sha
    stored.chmod(0o644)
    stored.write_bytes(png + b"changed on disk")
    broken = await client.get(f"{base}/bundle", headers=bearer(trade["buyer"]))
    problem = assert_problem(broken, 500, "evidence_damaged")
    assert "t.png" in problem["detail"] and problem["dispute_id"] == dispute["id"]
    # Its size kept, one byte changed: found by reading it before the answer starts (it
    # streams); and gone from the store.
    stored.write_bytes(bytes([png[0] ^ 1]) + png[1:])
    with capture_logs() as logs:
        broken = await client.get(f"{base}/bundle", headers=bearer(trade["buyer"]))
    problem = assert_problem(broken, 500, "evidence_damaged")
    assert "(t.png): the stored file no longer has its sha256" in problem["detail"]
    assert [e["dispute_id"] for e in logs if e["event"] == "dispute_evidence_damaged"] == [
        dispute["id"]
    ]
    stored.unlink()
    broken = await client.get(f"{base}/bundle", headers=bearer(trade["buyer"]))
    problem = assert_problem(broken, 500, "evidence_damaged")
    assert "(t.png): the stored file cannot be read" in problem["detail"]
