"""HTTP platform: request ids and trace context, RFC 9457 problem details for every error,
strictly decoded request bodies, the access log and the requests' metrics."""

from __future__ import annotations

import dataclasses
import re
import time
import uuid
from collections.abc import Iterable
from typing import Any, ClassVar

import msgspec
from litestar import Request, Response
from litestar.enums import ParamType, ScopeType
from litestar.exceptions import HTTPException, SerializationException, ValidationException
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    Components,
    OpenAPI,
    OpenAPIHeader,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    Reference,
    Schema,
    SecurityScheme,
)
from litestar.routes import HTTPRoute
from litestar.types import ASGIApp, Empty, Message, Receive, Scope, Send

from exchange.platform import metrics, tracing
from exchange.platform.auth import route_access
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


def trace_of(scope: Scope) -> tracing.TraceContext:
    """The request's span: a child of the client's ``traceparent`` when it sent one valid
    header, else the first span of a new trace (a bad header is ignored, never refused); stable
    per request."""
    state = scope.setdefault("state", {})
    span = state.get("trace")
    if span is None:
        sent = [value for name, value in scope.get("headers", []) if name == b"traceparent"]
        span = tracing.continued(sent[0].decode("latin-1") if len(sent) == 1 else None)
        state["trace"] = span
    assert isinstance(span, tracing.TraceContext)
    return span


class RequestContextMiddleware:
    """Binds the request id, the trace (`trace_of`) and the route to every log line, writes one
    access-log line with the status the client was actually sent, and counts the request by its
    route's template (`metrics.observe_request`).

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
        span = trace_of(scope)
        status: int | None = None
        started = time.perf_counter()

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        method = scope.get("method", "")
        with tracing.bound(span, request_id=rid, method=method, route=scope["path"]):
            try:
                try:
                    await self.app(scope, receive, send_with_status)
                except Exception as error:
                    if status is not None:
                        raise  # the answer had begun: nothing better can be sent now
                    await _answer_error(scope, receive, send_with_status, error)
            finally:
                seconds = time.perf_counter() - started
                answered = 500 if status is None else status
                log.info(
                    "request", status=answered, path=scope["path"], ms=round(seconds * 1000, 2)
                )
                # The route's template (path parameters as such), never the raw path.
                metrics.observe_request(
                    method, scope.get("path_template", "unmatched"), answered, seconds
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


async def add_traceparent_header(message: Message, scope: Scope) -> None:
    """``before_send`` hook: every response, matched route or not, carries the ``traceparent``
    of the exchange's span handling it (`trace_of`)."""
    if message["type"] == "http.response.start":
        headers = list(message.get("headers", []))
        headers.append((b"traceparent", trace_of(scope).header.encode()))
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


# Handler ``opt`` key: request headers the operation needs although the handler reads them as
# optional, so that a request without one gets the operation's own problem (a named code and a
# detail saying what to send) rather than Litestar's generic 400. See `required_headers`.
REQUIRED_HEADERS = "dataex_required_headers"
# Handler ``opt`` key: headers of its answers, per status, beyond those every answer carries.
RESPONSE_HEADERS = "dataex_response_headers"
# What every answer carries, and how long to wait after a 429 or a 503.
_REQUEST_ID = "X-Request-ID"
_TRACEPARENT = "traceparent"
_TRACEPARENT_PATTERN = r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
_HEADER_COMPONENTS: dict[str, OpenAPIHeader | Reference] = {
    _REQUEST_ID: OpenAPIHeader(
        schema=Schema(type=OpenAPIType.STRING, max_length=128),
        required=True,
        description="The request's id: the client's own X-Request-ID when it sent a well-formed"
        " one (8-128 of A-Z a-z 0-9 . _ : -), else a new one. Logs and problems quote it.",
    ),
    _TRACEPARENT: OpenAPIHeader(
        schema=Schema(type=OpenAPIType.STRING, pattern=_TRACEPARENT_PATTERN),
        required=True,
        description="W3C Trace Context of the exchange's span handling the request: in the"
        " client's trace when it sent a valid traceparent, else in a new one. Logs and the"
        " events the request causes carry its trace id.",
    ),
}
# Inline in each operation (not a $ref): readers of the parameters need not resolve it.
_REQUEST_ID_PARAMETER = Parameter(
    name=_REQUEST_ID,
    param_in=ParamType.HEADER,
    required=False,
    schema=Schema(type=OpenAPIType.STRING, max_length=MAX_PARAMETER_CHARS),
    description="Optional id of this request (8-128 of A-Z a-z 0-9 . _ : -), echoed in"
    " X-Request-ID and logged; any other value is replaced by a new id.",
)
_TRACEPARENT_PARAMETER = Parameter(
    name=_TRACEPARENT,
    param_in=ParamType.HEADER,
    required=False,
    schema=Schema(type=OpenAPIType.STRING, max_length=MAX_PARAMETER_CHARS),
    description="Optional W3C Trace Context of the caller's span: a valid one is continued,"
    " anything else ignored (a new trace is started); never refused.",
)
_RETRY_AFTER = Schema(type=OpenAPIType.STRING, pattern=r"^[0-9]+$", description="seconds to wait")
_PROBLEM_HEADERS: dict[str, dict[str, OpenAPIHeader | Reference]] = {
    "401": {
        "WWW-Authenticate": OpenAPIHeader(
            schema=Schema(type=OpenAPIType.STRING, const='Bearer realm="dataex"'),
            required=True,
            description="The scheme to authenticate with: a bearer token",
        )
    },
    "429": {
        "Retry-After": OpenAPIHeader(
            schema=_RETRY_AFTER,
            required=True,
            description="Seconds until the token's or the address's bucket allows a request again",
        )
    },
    "503": {
        "Retry-After": OpenAPIHeader(
            schema=_RETRY_AFTER,
            required=False,
            description="Seconds after which the same request is likely to succeed, when the"
            " dependency is expected back soon (PostgreSQL restarting or failing over: 5)",
        )
    },
}


# How a caller authenticates (``Authorization: Bearer …``), by the route's access policy.
_SECURITY_SCHEMES: dict[str, SecurityScheme | Reference] = {
    "apiToken": SecurityScheme(
        type="http",
        scheme="bearer",
        bearer_format="dxt_<id>_<secret>",
        description="An API token of an organisation, with the roles the operation needs"
        " (401 without one or with a bad one, 403 without the role)",
    ),
    "deliveryToken": SecurityScheme(
        type="http",
        scheme="bearer",
        bearer_format="JWS",
        description="A delivery token of the grant (POST /v1/grants/{grant_id}/tokens): a"
        " compact JWS of at most 15 minutes",
    ),
}


def _security(handler: HTTPRouteHandler) -> list[dict[str, list[str]]] | None:
    access = route_access(handler)
    if access == "delivery_token":
        return [{"deliveryToken": []}]
    if access == "public":
        return None
    return [{"apiToken": []}]


def required_headers(*names: str) -> dict[str, Any]:
    """Route ``opt`` declaring request headers the operation cannot do without, which its
    handler nevertheless reads as optional in order to answer their absence itself (merge it
    with the access policy: ``opt=requires("buyer") | required_headers("Idempotency-Key")``).
    The document then marks them required."""
    return {REQUIRED_HEADERS: names}


def response_headers(headers: dict[int, dict[str, tuple[str, bool]]]) -> dict[str, Any]:
    """Route ``opt`` documenting the headers of the operation's answers: per status, each
    header's description and whether every answer of that status carries it. (Litestar's
    ``response_headers`` document the success status only.)"""
    return {RESPONSE_HEADERS: headers}


def declare_problem_responses(routes: Iterable[Any]) -> None:
    """Declare every operation's problem responses in the OpenAPI document.

    Litestar would document only a 400 with its own error shape; the API answers every error
    as an RFC 9457 problem (`Problem`, ``application/problem+json``), so clients and contract
    tests (schemathesis) can check each answer against the document. A handler's own
    ``responses`` win. Each operation is documented by `DocumentedOperation` (or the handler's
    own subclass of it), with the headers `required_headers` names marked required.
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
            if handler.security is None:
                handler.security = _security(handler)
            operation_class = handler.operation_class
            if operation_class is Operation:
                operation_class = DocumentedOperation
            names = tuple(handler.opt.get(REQUIRED_HEADERS, ()))
            answers = {
                str(status): {
                    name: OpenAPIHeader(
                        schema=Schema(type=OpenAPIType.STRING),
                        description=description,
                        required=required,
                    )
                    for name, (description, required) in headers.items()
                }
                for status, headers in handler.opt.get(RESPONSE_HEADERS, {}).items()
            }
            if names or answers:
                operation_class = type(
                    f"{operation_class.__name__}Of{handler.handler_name.title()}",
                    (operation_class,),
                    {"required_headers": names, "answer_headers": answers},
                )
            handler.operation_class = operation_class


@dataclasses.dataclass
class DocumentedOperation(Operation):
    """An operation documented as the platform answers it.

    - Litestar documents a handler returning ``A | B`` as ``oneOf``; when a value fits both (an
      empty page of either kind) a validator rightly calls that a violation, so the document
      says ``anyOf``: the body is at least one of them.
    - Every string path or query parameter without a ``maxLength`` gets the platform's limit
      (`MAX_PARAMETER_CHARS`), which `InputGuardMiddleware` enforces.
    - The headers every answer carries (``X-Request-ID`` and ``traceparent``, which a request
      may also send), and
      those of its problems: ``WWW-Authenticate`` on a 401, ``Retry-After`` on a 429 (always)
      and on a 503 (when the dependency is expected back soon).
    - The request headers in ``required_headers`` (see `required_headers`) are required, and
      the answers carry the headers of ``answer_headers`` (see `response_headers`).
    """

    required_headers: ClassVar[tuple[str, ...]] = ()
    answer_headers: ClassVar[dict[str, dict[str, OpenAPIHeader | Reference]]] = {}

    def __post_init__(self) -> None:
        required = {name.lower() for name in self.required_headers}
        for parameter in self.parameters or []:
            if not isinstance(parameter, Parameter):
                continue
            if parameter.param_in == "header" and parameter.name.lower() in required:
                parameter.required = True
                parameter.schema = _not_null(parameter.schema)
            if parameter.param_in in ("path", "query") and isinstance(parameter.schema, Schema):
                _bound_strings(parameter.schema)
        self.parameters = [*(self.parameters or []), _REQUEST_ID_PARAMETER, _TRACEPARENT_PARAMETER]
        for status, response in (self.responses or {}).items():
            if not isinstance(response, OpenAPIResponse):
                continue
            response.headers = {
                **(response.headers or {}),
                _REQUEST_ID: Reference(ref=f"#/components/headers/{_REQUEST_ID}"),
                _TRACEPARENT: Reference(ref=f"#/components/headers/{_TRACEPARENT}"),
                **_PROBLEM_HEADERS.get(str(status), {}),
                **self.answer_headers.get(str(status), {}),
            }
            for media in (response.content or {}).values():
                schema = media.schema
                if isinstance(schema, Schema) and schema.one_of and not schema.discriminator:
                    schema.any_of, schema.one_of = schema.one_of, None


def _not_null(schema: Schema | Reference | None) -> Schema | Reference | None:
    """A required header's schema without the ``null`` its optional annotation brought: a
    header is absent or a string, never null."""
    if not isinstance(schema, Schema) or not schema.one_of:
        return schema
    kept = [s for s in schema.one_of if not (isinstance(s, Schema) and s.type == OpenAPIType.NULL)]
    if len(kept) != 1 or not isinstance(kept[0], Schema):
        return schema
    return dataclasses.replace(
        kept[0],
        min_length=schema.min_length if kept[0].min_length is None else kept[0].min_length,
        max_length=schema.max_length if kept[0].max_length is None else kept[0].max_length,
        description=schema.description or kept[0].description,
    )


def _bound_strings(schema: Schema) -> None:
    for alternative in [*(schema.one_of or []), *(schema.any_of or [])]:
        if isinstance(alternative, Schema):
            _bound_strings(alternative)
    if isinstance(schema.items, Schema):
        _bound_strings(schema.items)
    kinds = schema.type if isinstance(schema.type, list) else [schema.type]
    if OpenAPIType.STRING in kinds and schema.max_length is None and not schema.enum:
        schema.max_length = MAX_PARAMETER_CHARS


# --- the document as a whole ------------------------------------------------------------------


class SchemaNameClash(RuntimeError):
    """Two types of the API would be documented under one name: a client generator would make
    one class of them and drop the other (and everything that refers to it)."""


@dataclasses.dataclass
class DocumentedOpenAPIConfig(OpenAPIConfig):
    """Litestar's configuration, building `DocumentedOpenAPI` with the platform's shared
    header and security scheme components."""

    def to_openapi_schema(self) -> OpenAPI:
        built = super().to_openapi_schema()
        components = built.components or Components()
        components.headers = {**(components.headers or {}), **_HEADER_COMPONENTS}
        components.security_schemes = {
            **(components.security_schemes or {}),
            **_SECURITY_SCHEMES,
        }
        built.components = components
        return DocumentedOpenAPI(
            **{f.name: getattr(built, f.name) for f in dataclasses.fields(built) if f.init}
        )


@dataclasses.dataclass
class DocumentedOpenAPI(OpenAPI):
    """The document, each schema component named by its title.

    Litestar keys the components of two types sharing a class name by their module paths
    (``exchange_listings_schemas_Product``) and leaves both titled ``Product``: a client
    generator, which names its classes by the title, then makes one class of the two and drops
    the other and every schema and operation that refers to it. Here every component is named
    by its title (the class name, or the type's ``__schema_name__``), and two components of one
    title are refused (`SchemaNameClash`) so a clash is fixed where it starts: by giving one of
    the types a ``__schema_name__`` of its own.
    """

    def to_schema(self) -> dict[str, Any]:
        return name_components(super().to_schema())


_COMPONENT_NAME = re.compile(r"^[A-Za-z0-9._-]+$")


def name_components(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` with every schema component keyed by its title, and references following;
    raises `SchemaNameClash` when two components share a title."""
    schemas: dict[str, Any] = document.get("components", {}).get("schemas", {})
    names: dict[str, str] = {}
    owners: dict[str, list[str]] = {}
    for key, schema in schemas.items():
        title = schema.get("title") if isinstance(schema, dict) else None
        name = title if isinstance(title, str) and _COMPONENT_NAME.match(title) else key
        names[key] = name
        owners.setdefault(title if isinstance(title, str) else name, []).append(key)
    clashes = {title: keys for title, keys in owners.items() if len(keys) > 1}
    if clashes:
        raise SchemaNameClash(
            "types documented under one name (give one a __schema_name__): "
            + "; ".join(f"{title}: {', '.join(sorted(keys))}" for title, keys in clashes.items())
        )
    if all(key == name for key, name in names.items()):
        return document
    refs = {
        f"#/components/schemas/{key}": f"#/components/schemas/{name}" for key, name in names.items()
    }

    def rename(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: refs.get(v, v) if k == "$ref" and isinstance(v, str) else rename(v)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [rename(v) for v in value]
        return value

    renamed: dict[str, Any] = rename(document)
    renamed["components"]["schemas"] = dict(
        sorted((names[key], schema) for key, schema in renamed["components"]["schemas"].items())
    )
    return renamed
