"""structlog set-up: readable in a terminal, JSON lines otherwise; no secret in a log line
(secret-looking keys, dataex tokens and the passwords of URLs are redacted)."""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = re.compile(r"(token|secret|password|authorization|private|master_key|api_key)", re.I)
_TOKEN_VALUE = re.compile(r"dxt_[A-Za-z0-9]+_[A-Za-z0-9_-]+")
# The password of a URL with credentials (postgresql://user:password@…, nats://user:password@…).
_URL_PASSWORD = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^\s/@:]*:)[^\s/@]+@", re.I)


def _redact(value: Any) -> Any:
    if isinstance(value, str):
        # Most values hold neither a URL nor a token: skip the expressions (every log line
        # passes here, each of its values).
        if "://" in value:
            value = _URL_PASSWORD.sub(r"\1[redacted]@", value)
        if "dxt_" in value:
            value = _TOKEN_VALUE.sub("dxt_[redacted]", value)
    return value


@functools.lru_cache(maxsize=1024)
def _secret_key(key: str) -> bool:
    return bool(_SECRET_KEYS.search(key)) and not key.endswith(("_id", "_count"))


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Drop values of secret-looking keys and mask anything shaped like a dataex token."""
    for key in list(event_dict):
        if key != "event" and _secret_key(key):
            event_dict[key] = "[redacted]"
        else:
            event_dict[key] = _redact(event_dict[key])
    return event_dict


class _Lines:
    """Standard error, written a whole line per system call. The parts of `dataex up` share one
    standard error: `print` writes a line and its newline separately, and the text layer splits
    a long line (over 8 KiB) into several writes, so lines of different processes interleaved
    mid-line. One `os.write` a line (looping on a short write) keeps each line whole in a file,
    and in a pipe up to its atomic size (4 KiB on Linux)."""

    def write(self, text: str) -> int:
        stream = sys.stderr  # looked up each time: pytest's capture replaces it
        try:
            fd = stream.fileno()
        except (AttributeError, OSError, ValueError):
            stream.write(text)
            stream.flush()
            return len(text)
        stream.flush()  # anything written through the text layer goes first
        data = memoryview(text.encode("utf-8", "backslashreplace"))
        while data:
            data = data[os.write(fd, data) :]
        return len(text)

    def flush(self) -> None:
        return None


def configure_logging(log_format: str = "auto", level: str = "info") -> None:
    """Configure structlog and route the standard library's logging through it."""
    use_json = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else _console(sys.stderr.isatty())
    )
    numeric = getattr(logging, level.upper(), logging.INFO)
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer]
        if use_json
        else [*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.WriteLoggerFactory(_LINES),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(_LINES)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.INFO) if numeric < logging.INFO else numeric)


_LINES = _Lines()


def _console(colors: bool) -> Any:
    """The terminal renderer; its tracebacks leave out local variables (a URL with its password
    may be one), which Rich's would show."""
    if importlib.util.find_spec("rich") is None:
        return structlog.dev.ConsoleRenderer(colors=colors)
    tracebacks = structlog.dev.RichTracebackFormatter(
        show_locals=False, color_system="truecolor" if colors else None
    )
    return structlog.dev.ConsoleRenderer(colors=colors, exception_formatter=tracebacks)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
