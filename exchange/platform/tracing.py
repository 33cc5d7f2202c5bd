"""W3C Trace Context: one trace from an HTTP request through the outbox to settlement.

A request may carry a ``traceparent`` header (``00-<trace-id>-<parent-id>-<flags>``, W3C Trace
Context). A valid one is continued: the API's handling of the request is a new span (a new
parent-id) in that trace. A missing or malformed one starts a new trace; it is never an error
to the client. The API answers with the ``traceparent`` of its span, so a client that sent none
learns the trace id.

The trace is bound to every log line of the request (``trace_id``, ``span_id``), stored with
each outbox row the request writes and sent in the CloudEvent's ``traceparent`` extension
attribute (the CloudEvents distributed tracing extension). A worker handling an event continues
its trace in a span of its own, which its log lines and the events it writes carry in turn, so
``grep <trace-id>`` over the logs follows an order from the request to its settlement.

No spans are exported anywhere: the logs are the trace.
"""

from __future__ import annotations

import re
import secrets
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from structlog.contextvars import bind_contextvars, reset_contextvars

HEADER = "traceparent"
# version 00: exactly this; a later version may append "-..." fields, which are ignored.
_TRACEPARENT = re.compile(
    r"(?P<version>[0-9a-f]{2})-(?P<trace_id>[0-9a-f]{32})-(?P<span_id>[0-9a-f]{16})"
    r"-(?P<flags>[0-9a-f]{2})"
)
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
SAMPLED = "01"  # every trace is recorded (in the logs), so new ones say so
_KNOWN_FLAGS = 0x03  # sampled, random-trace-id (Trace Context Level 2): passed on; others not


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A span in a trace: the trace id, this span's id, and the trace flags (two hex digits)."""

    trace_id: str
    span_id: str
    flags: str = SAMPLED

    @property
    def header(self) -> str:
        """This span as a version-00 ``traceparent`` value (a child's parent)."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def child(self) -> TraceContext:
        """A new span in the same trace."""
        return TraceContext(self.trace_id, _span_id(), self.flags)


def _span_id() -> str:
    while (span := secrets.token_hex(8)) == _ZERO_SPAN:  # pragma: no cover - 2^-64
        pass
    return span


def start() -> TraceContext:
    """A span of a new trace."""
    while (trace := secrets.token_hex(16)) == _ZERO_TRACE:  # pragma: no cover - 2^-128
        pass
    return TraceContext(trace, _span_id(), SAMPLED)


def parse(value: str | None) -> TraceContext | None:
    """The span a ``traceparent`` value names, or None when it is absent or invalid.

    Strict, as W3C Trace Context says: lowercase hex only; version ``ff`` is invalid; version
    ``00`` is exactly 55 characters; a later version is read by its first four fields, which must
    be followed by the end or ``-``; an all-zero trace-id or parent-id is invalid. Optional
    whitespace around the value (an HTTP field's OWS) is not part of it."""
    if value is None:
        return None
    value = value.strip(" \t")
    found = _TRACEPARENT.match(value)
    if found is None:
        return None
    version = found["version"]
    if version == "ff":
        return None
    if version == "00" and len(value) != 55:
        return None
    if len(value) > 55 and value[55] != "-":
        return None
    if found["trace_id"] == _ZERO_TRACE or found["span_id"] == _ZERO_SPAN:
        return None
    flags = f"{int(found['flags'], 16) & _KNOWN_FLAGS:02x}"
    return TraceContext(found["trace_id"], found["span_id"], flags)


def continued(value: str | None) -> TraceContext:
    """The span of the work caused by ``value`` (a ``traceparent``): a child of it when it is
    valid, else the first span of a new trace."""
    parent = parse(value)
    return parent.child() if parent is not None else start()


_current: ContextVar[TraceContext | None] = ContextVar("dataex_trace", default=None)


def current() -> TraceContext | None:
    """The span of the request or event being handled, if any."""
    return _current.get()


def current_traceparent() -> str | None:
    span = _current.get()
    return None if span is None else span.header


class _Bound:
    """`bound`'s context manager: a class, since every request enters one (a generator-based
    one costs about 2 µs more)."""

    __slots__ = ("_fields", "_span", "_token", "_tokens")

    def __init__(self, span: TraceContext, fields: dict[str, Any]) -> None:
        self._span = span
        self._fields = fields

    def __enter__(self) -> TraceContext:
        self._token = _current.set(self._span)
        self._tokens = bind_contextvars(
            trace_id=self._span.trace_id, span_id=self._span.span_id, **self._fields
        )
        return self._span

    def __exit__(self, *_exc: object) -> None:
        reset_contextvars(**self._tokens)
        _current.reset(self._token)


def bound(span: TraceContext, **fields: Any) -> AbstractContextManager[TraceContext]:
    """Within the block, ``span`` is the current span and every log line carries its
    ``trace_id`` and ``span_id`` (and ``fields``: binding them here, in one go, costs less
    than binding them apart)."""
    return _Bound(span, fields)
