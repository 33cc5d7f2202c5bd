"""W3C Trace Context: which ``traceparent`` values are continued, which start a new trace, and
that the current span reaches every log line."""

from __future__ import annotations

import pytest
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from exchange.platform import tracing
from exchange.platform.logging import get_logger

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("value", "flags"),
    [
        (f"00-{TRACE}-{SPAN}-01", "01"),
        (f"00-{TRACE}-{SPAN}-00", "00"),
        (f" 00-{TRACE}-{SPAN}-01\t", "01"),  # optional whitespace around a field value
        (f"00-{TRACE}-{SPAN}-03", "03"),  # sampled + random trace-id (Level 2)
        (f"00-{TRACE}-{SPAN}-ff", "03"),  # unknown flags are not passed on
        (f"01-{TRACE}-{SPAN}-01", "01"),  # a later version: its first fields ...
        (f"cc-{TRACE}-{SPAN}-01-what-the-future-adds", "01"),  # ... then "-" and anything
    ],
)
def test_a_valid_traceparent_is_continued(value, flags):
    parent = tracing.parse(value)
    assert parent == tracing.TraceContext(TRACE, SPAN, flags)
    child = parent.child()
    assert (child.trace_id, child.flags) == (TRACE, flags)
    assert child.span_id != SPAN
    assert tracing.parse(child.header) == child


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        f"00-{TRACE}-{SPAN}",  # no flags
        f"00-{TRACE}-{SPAN}-01-",  # version 00 is exactly 55 characters
        f"00-{TRACE}-{SPAN}-01-extra",
        f"00-{TRACE.upper()}-{SPAN}-01",  # lowercase hex only
        f"00-{TRACE}-{SPAN.upper()}-01",
        f"0A-{TRACE}-{SPAN}-01",
        f"ff-{TRACE}-{SPAN}-01",  # version ff is invalid
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace-id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent-id
        f"00-{TRACE[:-1]}-{SPAN}-01",  # short trace-id
        f"00-{TRACE}-{SPAN}0-01",  # long parent-id
        f"00_{TRACE}_{SPAN}_01",
        f"01-{TRACE}-{SPAN}-01x",  # a later version's fields end at "-" or the end
        f"00-{TRACE}-{SPAN}-0g",
        f"00-{TRACE}-{SPAN}-01\r\nx-injected: 1",
    ],
)
def test_an_invalid_traceparent_is_ignored_and_a_new_trace_started(value):
    assert tracing.parse(value) is None
    started = tracing.continued(value)
    assert started.trace_id != TRACE
    assert tracing.parse(started.header) == started
    assert started.flags == "01"


def test_new_traces_and_spans_differ():
    spans = [tracing.start() for _ in range(100)]
    assert len({s.trace_id for s in spans}) == 100
    assert len({s.span_id for s in spans}) == 100
    assert all(len(s.header) == 55 for s in spans)


def test_the_bound_span_is_current_and_on_every_log_line_then_gone():
    span = tracing.continued(f"00-{TRACE}-{SPAN}-01")
    log = get_logger("test")
    with capture_logs(processors=[merge_contextvars]) as logs:
        assert tracing.current() is None
        with tracing.bound(span):
            assert tracing.current() == span
            assert tracing.current_traceparent() == span.header
            log.info("one")
            log.warning("two")
        log.info("after")
    assert [(e["event"], e.get("trace_id"), e.get("span_id")) for e in logs] == [
        ("one", TRACE, span.span_id),
        ("two", TRACE, span.span_id),
        ("after", None, None),
    ]
    assert tracing.current() is None
