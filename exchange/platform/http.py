"""HTTP platform: request ids, RFC 9457 problem details for every error, strictly decoded
request bodies, and the access log."""

from __future__ import annotations

import dataclasses
import re
import time
import uuid
from collections.abc import Iterable
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIResponse, OpenAPIType, Operation, Parameter, Schema
from litestar.routes import HTTPRoute
from litestar.types import ASGIApp, Empty, Message, Receive, Scope, Send
from structlog.contextvars import bound_contextvars

from exchange.platform.db import database_unreachable
from exchange.platform.errors import DataexError, DependencyUnavailable, FieldError
from exchange.platform.limits import EXEMPT_PREFIXES, MAX_PARAMETER_CHARS
from exchange.platform.logging import get_logger
from exchange.platform.validation import collect_errors, decode_json

log = get_logger("dataex.http")

PROBLEM_JSON = "application/problem+json"
REQUEST_ID_HEADER = "x-request-id"
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")
_MSGSPEC_PATH = re.compile(r" - at `\$\.?(?P<path>[^`]*)`$")
# How long a client should wait before retrying while PostgreSQL cannot be reached: about what
# a restart or a failover takes.
DATABASE_RETRY_AFTER_S = 5


def problem_type(code: str) -> str:
    return f"urn:dataex:problem:{code}"


class Problem(msgspec.Struct, omit_defaults=True):
    """RFC 9457 problem detail with dataex's stable ``code`` and the request id."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    instance: str | None = None
    request_id: str | None = None
    errors: list[FieldError] | None = None


def request_id_of(scope: Scope) -> str:
    """The client's ``X-Request-ID`` if well-formed, else a new one; stable per request."""
    state = scope.setdefault("state", {})
    rid = state.get("request_id")
    if rid is None:
        supplied = None
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                supplied = value.decode("latin-1")
                break
        rid = supplied if supplied and _CLIENT_REQUEST_ID.match(supplied) else uuid.uuid4().hex
        state["request_id"] = rid
    return str(rid)


class RequestContextMiddleware:
    """Binds the request id and route to every log line and writes one access-log line, with
    the status the client was actually sent.

    Litestar's exception boundary for a route sits inside the middlewares, around the handler:
    what the middlewares after this one raise (429 from the rate limiter, 400 and 422 from the
    input guard) would pass through here unanswered and be answered outside, unseen. So this
    one answers them itself, with the same handlers, through the send it watches; the line
    says 500 only when nothing was sent and the answer failed too.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        rid = request_id_of(scope)
        status: int | None = None
        started = time.perf_counter()

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        with bound_contextvars(request_id=rid, method=scope.get("method"), route=scope["path"]):
            try:
                try:
                    await self.app(scope, receive, send_with_status)
                except Exception as error:
                    if status is not None:
                        raise  # the answer had begun: nothing better can be sent now
                    await _answer_error(scope, receive, send_with_status, error)
            finally:
                log.info(
                    "request",
                    status=500 if status is None else status,
                    path=scope["path"],
                    ms=round((time.perf_counter() - started) * 1000, 2),
                )


async def _answer_error(scope: Scope, receive: Receive, send: Send, error: Exception) -> None:
    """Answer ``error`` as the route's exception boundary would: the handler of its nearest
    class in `EXCEPTION_HANDLERS` (the app's handlers)."""
    request: Request[Any, Any, Any] = Request(scope, receive)
    handler = next(EXCEPTION_HANDLERS[c] for c in type(error).__mro__ if c in EXCEPTION_HANDLERS)
    response = handler(request, error)
    await response.to_asgi_response(app=None, request=request)(scope, receive, send)


class ApiRequest(Request[Any, Any, Any]):
    """The API's request: its JSON body is decoded strictly, into the handler's ``data`` type.

    Litestar decodes a body to plain JSON values and then converts them to the handler's type
    with msgspec's ``strict=False`` (lax) rules, made for query strings: there "100", "1e2"
    and 100.0 all become the integer 100, and "true" a boolean. A JSON body carries its own
    types, so here it is decoded straight into the ``data`` type with the strict rules, and a
    value of the wrong type is a 422 naming its field. (Litestar converts the decoded value
    once more; a value already of the handler's type passes through unchanged.)
    """

    async def json(self) -> Any:
        if self._json is Empty:
            state = self._connection_state
            if state.json is Empty:
                state.json = decode_body(await self.body(), self.route_handler)
            self._json = state.json
        return self._json


def decode_body(body: bytes, handler: Any) -> Any:
    """``body`` as the handler's ``data`` type (plain JSON values for a handler without one).
    Raises `ValidationException` for a value of the wrong type or out of its bounds
    (`handle_validation_error` then lists every bad field) and `SerializationException` for
    malformed JSON (Litestar's 400, which `handle_http_exception` names ``malformed_json``)."""
    signature = getattr(handler, "parsed_fn_signature", None)
    data = signature.parameters.get("data") if signature is not None else None
    try:
        return decode_json(body or b"null", Any if data is None else data.annotation)
    except msgspec.ValidationError as error:
        raise ValidationException(
            str(error), extra=[{"message": str(error), "source": "body"}]
        ) from error
    except msgspec.DecodeError as error:
        raise SerializationException(str(error)) from error


async def add_request_id_header(message: Message, scope: Scope) -> None:
    """``before_send`` hook: every response, matched route or not, carries its request id."""
    if message["type"] == "http.response.start":
        headers = list(message.get("headers", []))
        headers.append((b"x-request-id", request_id_of(scope).encode()))
        message["headers"] = headers


def problem_response(
    request: Request[Any, Any, Any],
    *,
    status: int,
    code: str,
    title: str,
    detail: str,
    errors: list[FieldError] | None = None,
    extensions: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[Any]:
    problem = Problem(
        type=problem_type(code),
        title=title,
        status=status,
        detail=detail,
        code=code,
        instance=_instance(request.url.path),
        request_id=request_id_of(request.scope),
        errors=errors or None,
    )
    body: dict[str, Any] = msgspec.to_builtins(problem)
    for key, value in (extensions or {}).items():
        body.setdefault(key, value)
    return Response(content=body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _described(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def _instance(path: str) -> str:
    """The request path, cut short when it is itself the problem (never echo a huge input)."""
    return path if len(path) <= MAX_PARAMETER_CHARS else path[:200] + "…"


def handle_dataex_error(request: Request[Any, Any, Any], error: DataexError) -> Response[Any]:
    if error.status >= 500:
        # One line per failed request; a passing condition (retry after) is only a warning.
        (log.error if error.retry_after_s is None else log.warning)(
            "request_failed",
            code=error.code,
            detail=error.detail,
            **({"cause": _described(error.__cause__)} if error.__cause__ else {}),
        )
    headers = None
    if error.status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="dataex"'}
    elif error.retry_after_s is not None:
        headers = {"Retry-After": str(error.retry_after_s)}
    return problem_response(
        request,
        status=error.status,
        code=error.code,
        title=error.title,
        detail=error.detail,
        errors=error.errors,
        extensions=error.extensions,
        headers=headers,
    )


def _field_errors(extra: Any) -> list[FieldError]:
    errors: list[FieldError] = []
    for item in extra if isinstance(extra, list) else []:
        if not isinstance(item, dict):
            continue
        message = str(item.get("message", "invalid value"))
        path = str(item.get("key") or "")
        match = _MSGSPEC_PATH.search(message)
        if match:
            message = message[: match.start()]
            path = ".".join(p for p in (path, match["path"]) if p)
        source = item.get("source")
        errors.append(
            FieldError(path=path or "$", message=message, source=str(source) if source else None)
        )
    return errors


def _body_errors(request: Request[Any, Any, Any]) -> list[FieldError]:
    """Re-check the cached body against the handler's ``data`` type to report every bad field."""
    handler = request.scope.get("route_handler")
    signature = getattr(handler, "parsed_fn_signature", None)
    data = signature.parameters.get("data") if signature is not None else None
    body = request._connection_state.body
    if data is None or not isinstance(body, bytes) or not body:
        return []
    try:
        value = decode_json(body)
    except msgspec.DecodeError:
        return []
    return collect_errors(data.annotation, value)


def handle_validation_error(
    request: Request[Any, Any, Any], error: ValidationException
) -> Response[Any]:
    """Every bad field at once. A JSON body that is well-formed but has values of the wrong
    type or out of bounds is 422; a bad or missing path, query or header parameter is 400."""
    items = error.extra if isinstance(error.extra, list) else []
    said_body = any(isinstance(i, dict) and i.get("source") == "body" for i in items)
    errors = _body_errors(request) if said_body or not items else []
    in_body = said_body or bool(errors)
    errors = errors or _field_errors(error.extra)
    if not errors:
        detail = str(error.detail)
        match = _MSGSPEC_PATH.search(detail)
        if match:
            errors = [
                FieldError(
                    path=match["path"] or "$", message=detail[: match.start()], source="body"
                )
            ]
        else:
            errors = [FieldError(path="$", message=detail, source="body")]
    return problem_response(
        request,
        status=422 if in_body else 400,
        code="validation_failed",
        title="The request does not match the expected shape",
        detail="; ".join(f"{e.path}: {e.message}" for e in errors),
        errors=errors,
    )


_HTTP_CODES = {
    400: ("malformed_request", "The request could not be read"),
    401: ("unauthenticated", "Authentication required"),
    403: ("forbidden", "Not allowed"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    413: ("payload_too_large", "The request body is too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
    429: ("too_many_requests", "Too many requests"),
}


def handle_http_exception(request: Request[Any, Any, Any], error: HTTPException) -> Response[Any]:
    status = error.status_code
    if status >= 500:
        log.error("request_failed", status=status, detail=str(error.detail))
        code, title = "internal_error", "Internal error"
        detail = f"the server failed; quote request id {request_id_of(request.scope)}"
    else:
        code, title = _HTTP_CODES.get(status, ("http_error", "Request failed"))
        detail = str(error.detail)
        if status == 404 and detail == "Not Found":
            detail = f"no route {request.method} {_instance(request.url.path)}"
        elif status == 405:
            allowed = (error.headers or {}).get("allow", "")
            detail = f"{_instance(request.url.path)} does not accept {request.method}" + (
                f"; allowed: {allowed}" if allowed else ""
            )
    headers = dict(error.headers or {})
    if status == 400 and (reason := _json_error(request)) is not None:
        code, detail = "malformed_json", f"the body is not valid JSON: {reason}"
    return problem_response(
        request, status=status, code=code, title=title, detail=detail, headers=headers or None
    )


def _json_error(request: Request[Any, Any, Any]) -> str | None:
    body = request._connection_state.body
    if not isinstance(body, bytes) or not body:
        return None
    try:
        decode_json(body)
    except msgspec.DecodeError as error:
        return str(error)
    return None


def handle_unexpected(request: Request[Any, Any, Any], error: Exception) -> Response[Any]:
    if database_unreachable(error):
        # Not a failure of ours: the same request will do once PostgreSQL answers again.
        unavailable = DependencyUnavailable(
            "PostgreSQL cannot be reached just now (restarting, failing over or refusing"
            f" connections); retry after {DATABASE_RETRY_AFTER_S} s",
            retry_after_s=DATABASE_RETRY_AFTER_S,
        )
        unavailable.__cause__ = error
        return handle_dataex_error(request, unavailable)
    log.error("unhandled_error", error_type=type(error).__name__, exc_info=error)
    return problem_response(
        request,
        status=500,
        code="internal_error",
        title="Internal error",
        detail=f"the server failed unexpectedly; the cause is logged under request id"
        f" {request_id_of(request.scope)}",
    )


EXCEPTION_HANDLERS: dict[Any, Any] = {
    DataexError: handle_dataex_error,
    ValidationException: handle_validation_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}


_PROBLEM_DESCRIPTIONS = {
    400: "Malformed request, JSON (not UTF-8 too) or parameters, or JSON nested too deeply"
    " (names each field)",
    401: "No token, or an unknown, revoked or expired one",
    403: "The token lacks the role this operation needs",
    404: "No such resource, or another organisation's",
    409: "Conflicts with the resource's current state",
    413: "The request body is larger than DATAEX_MAX_BODY_BYTES",
    415: "The request body is not JSON",
    422: "Well-formed but invalid values: of the wrong JSON type, out of bounds, or refused by a"
    " rule (problem names each field)",
    429: "Rate limit of this token or address reached; see Retry-After",
    500: "Unexpected failure; its cause is logged under the request id",
    503: "A dependency (PostgreSQL, NATS, a published policy list) is unavailable; with"
    " Retry-After when it is expected back soon",
}


def problem_statuses(handler: HTTPRouteHandler, path: str) -> list[int]:
    """The problem answers an operation can give, from its access policy, method and path."""
    statuses = [400, 404, 422, 500]
    if not path.startswith(EXEMPT_PREFIXES):
        # Public operations too: some answer a token-only variant (GET /v1/products?mine=true).
        statuses += [401, 403, 429, 503]
    if handler.http_methods & {"POST", "PUT", "PATCH", "DELETE"}:
        statuses += [409, 413, 415]
    return sorted(statuses)


def declare_problem_responses(routes: Iterable[Any]) -> None:
    """Declare every operation's problem responses in the OpenAPI document.

    Litestar would document only a 400 with its own error shape; the API answers every error
    as an RFC 9457 problem (`Problem`, ``application/problem+json``), so clients and contract
    tests (schemathesis) can check each answer against the document. A handler's own
    ``responses`` win.
    """
    for route in routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            specs = {
                status: ResponseSpec(
                    data_container=Problem,
                    generate_examples=False,
                    description=_PROBLEM_DESCRIPTIONS[status],
                    media_type=PROBLEM_JSON,
                )
                for status in problem_statuses(handler, route.path)
            }
            handler.responses = {**specs, **(handler.responses or {})}
            if handler.operation_class is Operation:
                handler.operation_class = DocumentedOperation


@dataclasses.dataclass
class DocumentedOperation(Operation):
    """An operation documented as the platform answers it.

    - Litestar documents a handler returning ``A | B`` as ``oneOf``; when a value fits both (an
      empty page of either kind) a validator rightly calls that a violation, so the document
      says ``anyOf``: the body is at least one of them.
    - Every string path or query parameter without a ``maxLength`` gets the platform's limit
      (`MAX_PARAMETER_CHARS`), which `InputGuardMiddleware` enforces.
    """

    def __post_init__(self) -> None:
        for parameter in self.parameters or []:
            if (
                isinstance(parameter, Parameter)
                and parameter.param_in in ("path", "query")
                and isinstance(parameter.schema, Schema)
            ):
                _bound_strings(parameter.schema)
        for response in (self.responses or {}).values():
            if not isinstance(response, OpenAPIResponse):
                continue
            for media in (response.content or {}).values():
                schema = media.schema
                if isinstance(schema, Schema) and schema.one_of and not schema.discriminator:
                    schema.any_of, schema.one_of = schema.one_of, None


def _bound_strings(schema: Schema) -> None:
    for alternative in [*(schema.one_of or []), *(schema.any_of or [])]:
        if isinstance(alternative, Schema):
            _bound_strings(alternative)
    if isinstance(schema.items, Schema):
        _bound_strings(schema.items)
    kinds = schema.type if isinstance(schema.type, list) else [schema.type]
    if OpenAPIType.STRING in kinds and schema.max_length is None and not schema.enum:
        schema.max_length = MAX_PARAMETER_CHARS
