"""One order followed by its W3C trace: the request's log lines, its outbox row, the CloudEvent
on JetStream (``traceparent`` extension and header), the settlement worker's lines and the
``dx.trade.*`` event it writes, on real PostgreSQL and JetStream."""

from __future__ import annotations

import msgspec
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from exchange.platform import tracing
from exchange.platform.clock import OffsetClock
from exchange.platform.events import TradeExecuted
from tests.kit.market import auto_accept_product, deposit, order_body
from tests.kit.settlement import worker

TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE}-{CLIENT_SPAN}-01"


async def test_an_order_is_followed_from_its_request_to_its_settlement(
    client, settings, pool, admin_token, trade
):
    product_id = await auto_accept_product(client, trade)
    assert (
        await deposit(client, admin_token, trade["buyer_org"]["id"], 10**8, "d1")
    ).status_code in (200, 201)
    with capture_logs(processors=[merge_contextvars]) as request_logs:
        response = await client.post(
            "/v1/orders",
            json=order_body(product_id),
            headers={
                "Authorization": f"Bearer {trade['buyer']}",
                "Idempotency-Key": "trace-1",
                "traceparent": TRACEPARENT,
            },
        )
    assert response.status_code == 201, response.text
    order = response.json()
    assert order["state"] == "executed"
    # The API answers with its own span in the client's trace ...
    answered = tracing.parse(response.headers["traceparent"])
    assert answered is not None and answered.trace_id == TRACE
    assert answered.span_id != CLIENT_SPAN
    # ... and every line the request logged carries the trace.
    assert request_logs and {e.get("trace_id") for e in request_logs} == {TRACE}
    assert {e.get("span_id") for e in request_logs} == {answered.span_id}
    assert any(e["event"] == "request" and e["status"] == 201 for e in request_logs)

    # The executed-trade event carries the request's span, in its row and envelope.
    row = await pool.fetchrow(
        "SELECT traceparent, payload FROM outbox WHERE subject = $1",
        settings.subject("trade", "executed"),
    )
    assert row["traceparent"] == answered.header
    assert msgspec.json.decode(row["payload"], type=TradeExecuted).traceparent == answered.header

    async with worker(settings, pool, OffsetClock()) as w:
        await w.relay()
        js = w.platform.nats.jetstream()
        look = await js.pull_subscribe(
            settings.subject("trade", "executed"), stream=settings.stream_name
        )
        [message] = await look.fetch(1, timeout=5)
        assert message.headers["traceparent"] == answered.header
        event = msgspec.json.decode(message.data, type=TradeExecuted)
        assert event.traceparent == answered.header
        assert event.data.trade_id == order["trade_id"]
        with capture_logs(processors=[merge_contextvars]) as settlement_logs:
            assert await w.drain() == 1

    [registered] = [e for e in settlement_logs if e["event"] == "trade_registered"]
    assert registered["trade_id"] == order["trade_id"]
    assert registered["outcome"] == "reserved"
    assert registered["trace_id"] == TRACE
    assert registered["span_id"] not in (CLIENT_SPAN, answered.span_id)
    # The settlement worker's event continues the trace in its own span.
    reserved = await pool.fetchval(
        "SELECT traceparent FROM outbox WHERE subject = $1", settings.subject("trade", "reserved")
    )
    assert reserved == f"00-{TRACE}-{registered['span_id']}-01"


async def test_a_bad_traceparent_starts_a_new_trace_and_is_never_refused(client):
    for sent in (
        f"00-{TRACE.upper()}-{CLIENT_SPAN}-01",
        "00-garbage",
        f"ff-{TRACE}-{CLIENT_SPAN}-01",
    ):
        response = await client.get("/health/live", headers={"traceparent": sent})
        assert response.status_code == 200
        started = tracing.parse(response.headers["traceparent"])
        assert started is not None and started.trace_id != TRACE.lower()
    # Without one, each request is a trace of its own.
    a, b = [tracing.parse((await client.get("/health/live")).headers["traceparent"]) for _ in "ab"]
    assert a is not None and b is not None and a.trace_id != b.trace_id


async def test_problems_carry_the_trace_too(client):
    response = await client.get("/v1/me", headers={"traceparent": TRACEPARENT})
    assert response.status_code == 401
    assert tracing.parse(response.headers["traceparent"]).trace_id == TRACE  # type: ignore[union-attr]
