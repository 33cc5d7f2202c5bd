"""The policy lists for staff: the published versions and a version's rules (as ``GET
/v1/policy/lists`` and ``/lists/{version}``), the replay of a candidate list (as ``POST
/v1/policy/replay``: which open decisions would change, by which rule) and publishing it (as
``POST /v1/policy/lists``).

Replay and publishing are the admin's, as on the API: the routes there are guarded by the
admin role, so the page checks the same role before it calls the same service. A replay changes
nothing, so its report is the answer itself (200); publishing redirects to the new version.
"""

from __future__ import annotations

from typing import Any, Final, TypeVar

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.response import Template

from contracts.policy.rules import PolicyList, bundled_versions
from contracts.policy.schemas import PolicyListPublish, ReplayReport, ReplayRequest
from contracts.policy.service import PolicyService
from exchange.console.web import ROOT, render, see_other, session_of
from exchange.platform.audit import Actor
from exchange.platform.auth import Principal
from exchange.platform.errors import DataexError, FieldError, Forbidden, InvalidInput

ADMIN: Final = "admin"

T = TypeVar("T")


def require_admin(principal: Principal) -> None:
    """What the API's guard answers a token without the admin role, word for word."""
    if not principal.has(ADMIN):
        raise Forbidden(
            f"this route needs one of the roles {ADMIN};"
            f" the token has {', '.join(sorted(principal.roles)) or 'none'}",
            extensions={"required_roles": [ADMIN]},
        )


class PolicyPages(Controller):
    path = f"{ROOT}/policy"

    @get("/")
    async def lists(
        self, request: Request[Any, Any, Any], policy: NamedDependency[PolicyService]
    ) -> Template:
        return await _lists_page(request, policy)

    @get("/{version:str}")
    async def detail(
        self,
        request: Request[Any, Any, Any],
        version: FromPath[str],
        policy: NamedDependency[PolicyService],
    ) -> Template:
        detail = await policy.detail(version)
        return render(request, "policy_version.html", detail=detail)

    @post("/replay")
    async def replay(
        self,
        request: Request[Any, Any, Any],
        policy: NamedDependency[PolicyService],
        principal: NamedDependency[Principal],
    ) -> Template:
        """`POST /v1/policy/replay` from the form: the report, or the page with the problem."""
        require_admin(principal)
        form = await request.form()
        try:
            data = _form_as(
                {"version": _text(form, "version"), "source": _source(form)}, ReplayRequest
            )
            candidate = await policy.candidate(data.version, data.source)
            report = await policy.replay(candidate)
        except DataexError as problem:
            return await _lists_page(request, policy, problem=problem, form=form)
        return await _lists_page(request, policy, report=report, candidate=candidate, form=form)

    @post("/publish")
    async def publish(
        self,
        request: Request[Any, Any, Any],
        policy: NamedDependency[PolicyService],
        principal: NamedDependency[Principal],
        actor: NamedDependency[Actor],
    ) -> Response[Any]:
        """`POST /v1/policy/lists` from the form; then the published version's page."""
        require_admin(principal)
        form = await request.form()
        try:
            data = _form_as(
                {"source": _source(form), "effective_from": _text(form, "effective_from")},
                PolicyListPublish,
            )
            detail, _created = await policy.publish(actor, data.source, data.effective_from)
        except DataexError as problem:
            return await _lists_page(request, policy, problem=problem, form=form)
        return see_other(f"{ROOT}/policy/{detail.info.version}")


async def _lists_page(
    request: Request[Any, Any, Any],
    policy: PolicyService,
    *,
    problem: DataexError | None = None,
    report: ReplayReport | None = None,
    candidate: PolicyList | None = None,
    form: Any = None,
) -> Template:
    infos = await policy.infos()
    published = {info.version for info in infos}
    return render(
        request,
        "policy.html",
        status_code=problem.status if problem else 200,
        problem=problem,
        infos=list(reversed(infos)),  # newest first
        bundled=[p.stem for p in bundled_versions() if p.stem not in published],
        is_admin=session_of(request).principal.has(ADMIN),
        report=report,
        candidate=candidate,
        publishable=candidate is not None and candidate.version not in published,
        form=form or {},
    )


def _text(form: Any, name: str) -> str | None:
    value = form.get(name)
    return value.strip() or None if isinstance(value, str) else None


def _source(form: Any) -> str | None:
    """The pasted list, as the file it was pasted from: browsers send a textarea's line breaks
    as CRLF (the HTML form encoding), which the stored source should not keep."""
    value = form.get("source")
    if not isinstance(value, str) or not value.strip():
        return None
    return value.replace("\r\n", "\n")


def _form_as(raw: dict[str, Any], kind: type[T]) -> T:
    """The form as the API's request type, validated as the API validates its body."""
    try:
        return msgspec.convert(raw, kind)
    except msgspec.ValidationError as error:
        path = str(error).rpartition("at `$")[2].rstrip("`").lstrip(".") or "form"
        raise InvalidInput(
            f"the form is incomplete or invalid: {error}",
            errors=[FieldError(path=path, message=str(error), source="form")],
        ) from error
