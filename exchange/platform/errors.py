"""The one error hierarchy.

Each error maps to an RFC 9457 problem detail in one place (`exchange.platform.http`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec


class FieldError(msgspec.Struct, frozen=True, omit_defaults=True):
    """One offending input: where it is (a dotted path) and what is wrong with it."""

    path: str
    message: str
    source: str | None = None


class DataexError(Exception):
    """Base of every error a caller may see. ``code`` is stable and machine-readable."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    title: ClassVar[str] = "Bad request"
    # Seconds after which the same request may well succeed: sent as ``Retry-After``.
    retry_after_s: int | None = None

    def __init__(
        self,
        detail: str,
        *,
        errors: list[FieldError] | None = None,
        extensions: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []
        self.extensions = extensions or {}


class InvalidInput(DataexError):
    status = 422
    code = "invalid_input"
    title = "The request has invalid values"


class Unauthenticated(DataexError):
    status = 401
    code = "unauthenticated"
    title = "Authentication required"


class Forbidden(DataexError):
    status = 403
    code = "forbidden"
    title = "Not allowed for this token"


class NotFound(DataexError):
    status = 404
    code = "not_found"
    title = "Not found"


class Conflict(DataexError):
    status = 409
    code = "conflict"
    title = "Conflicts with the current state"


class Unavailable(DataexError):
    status = 503
    code = "unavailable"
    title = "A dependency is unavailable"


class DependencyUnavailable(Unavailable):
    """A server the exchange needs cannot be reached just now (PostgreSQL restarting, failing
    over, refusing connections): nothing is wrong with the request, and the same request is
    likely to succeed after ``retry_after_s`` seconds, which the answer says (``Retry-After``)."""

    code = "dependency_unavailable"
    title = "A dependency is unavailable just now"

    def __init__(self, detail: str, *, retry_after_s: int) -> None:
        super().__init__(detail, extensions={"retry_after_s": retry_after_s})
        self.retry_after_s = retry_after_s
