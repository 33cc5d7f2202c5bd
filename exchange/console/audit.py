"""The audit trail, searched as ``GET /v1/audit`` searches it (and, as there, for admins only):
by action, subject, the actor's organisation and a time range; newest first, keyset pages by id."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import quote

from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.params import FromQuery
from litestar.response import Template

from exchange.console.web import ROOT, render, session_of
from exchange.platform.audit.repository import list_entries
from exchange.platform.audit.schemas import AuditEntry
from exchange.platform.auth import require_roles
from exchange.platform.context import Platform
from exchange.platform.errors import DataexError, FieldError, InvalidInput
from exchange.platform.paging import decode_cursor, encode_cursor

PAGE: Final = 50
# Who may read the audit trail: the roles of ``GET /v1/audit``.
AUDIT_ROLES: Final = ("admin",)
MAX_FILTER: Final = 200
MAX_VALUE: Final = 160  # characters of one detail value shown before it is cut


@dataclass(frozen=True, slots=True)
class AuditSearch:
    """The search form's filters, checked; each ``None`` when not given."""

    action: str | None = None
    subject_type: str | None = None
    subject_id: str | None = None
    actor_org_id: uuid.UUID | None = None
    since: datetime | None = None
    until: datetime | None = None

    def query(self) -> dict[str, str]:
        """The filters as query parameters (times as a datetime-local input writes them, UTC)."""
        values = {
            "action": self.action,
            "subject_type": self.subject_type,
            "subject_id": self.subject_id,
            "actor_org_id": str(self.actor_org_id) if self.actor_org_id else None,
            "since": _form_time(self.since),
            "until": _form_time(self.until),
        }
        return {k: v for k, v in values.items() if v}


def _form_time(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds")


def _text(value: str | None, field: str, errors: list[FieldError]) -> str | None:
    value = (value or "").strip()
    if len(value) > MAX_FILTER:
        errors.append(FieldError(path=field, message=f"at most {MAX_FILTER} characters",
                                 source="query"))  # fmt: skip
        return None
    return value or None


def _time(value: str | None, field: str, errors: list[FieldError]) -> datetime | None:
    """A time from the form: ``YYYY-MM-DDTHH:MM`` in UTC (as a datetime-local input writes it),
    or RFC 3339 with its offset."""
    value = (value or "").strip()
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        errors.append(FieldError(path=field, message=f"not a time: {value[:40]}", source="query"))
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def search_of(
    action: str | None,
    subject_type: str | None,
    subject_id: str | None,
    actor_org_id: str | None,
    since: str | None,
    until: str | None,
) -> AuditSearch:
    """The filters as `list_entries` takes them; a bad one is a 400 naming each field."""
    errors: list[FieldError] = []
    org: uuid.UUID | None = None
    if actor_org_id and actor_org_id.strip():
        try:
            org = uuid.UUID(actor_org_id.strip())
        except ValueError:
            errors.append(FieldError(path="actor_org_id", message="not an organisation id",
                                     source="query"))  # fmt: skip
    search = AuditSearch(
        action=_text(action, "action", errors),
        subject_type=_text(subject_type, "subject_type", errors),
        subject_id=_text(subject_id, "subject_id", errors),
        actor_org_id=org,
        since=_time(since, "since", errors),
        until=_time(until, "until", errors),
    )
    if errors:
        raise InvalidInput(
            "the search is not valid: " + "; ".join(f"{e.path} {e.message}" for e in errors),
            errors=errors,
        )
    return search


def detail_items(entry: AuditEntry) -> list[tuple[str, str]]:
    """An entry's detail, one line per key: strings as they are, anything else as compact
    JSON; long values cut."""
    items: list[tuple[str, str]] = []
    for key in sorted(entry.detail):
        value = entry.detail[key]
        text = (
            value
            if isinstance(value, str)
            else json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        )
        items.append((key, text if len(text) <= MAX_VALUE else text[: MAX_VALUE - 1] + "…"))
    return items


class AuditPages(Controller):
    path = f"{ROOT}/audit"

    @get("/")
    async def search(
        self,
        request: Request[Any, Any, Any],
        platform: NamedDependency[Platform],
        action: FromQuery[str | None] = None,
        subject_type: FromQuery[str | None] = None,
        subject_id: FromQuery[str | None] = None,
        actor_org_id: FromQuery[str | None] = None,
        since: FromQuery[str | None] = None,
        until: FromQuery[str | None] = None,
        cursor: FromQuery[str | None] = None,
    ) -> Template:
        require_roles(session_of(request).principal, AUDIT_ROLES)
        raw = {"action": action, "subject_type": subject_type, "subject_id": subject_id,
               "actor_org_id": actor_org_id, "since": since, "until": until}  # fmt: skip
        try:
            search = search_of(**raw)
        except DataexError as problem:
            form = {k: (v or "") for k, v in raw.items()}
            return render(request, "audit.html", status_code=problem.status, problem=problem,
                          form=form, entries=[], detail=detail_items, next_page=None,
                          first_page=None, searched=True)  # fmt: skip
        before_id = _cursor(cursor)
        entries = await list_entries(
            platform.pool,
            limit=PAGE,
            before_id=before_id,
            action=search.action,
            subject_type=search.subject_type,
            subject_id=search.subject_id,
            actor_org_id=search.actor_org_id,
            since=search.since,
            until=search.until,
        )
        query = search.query()
        base = f"{ROOT}/audit/"
        encoded = "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
        return render(
            request,
            "audit.html",
            problem=None,
            form={k: query.get(k, "") for k in raw},
            entries=entries,
            detail=detail_items,
            searched=bool(query),
            next_page=(
                f"{base}?{encoded + '&' if encoded else ''}cursor={encode_cursor(entries[-1].id)}"
                if len(entries) == PAGE
                else None
            ),
            first_page=base + (f"?{encoded}" if encoded else "") if before_id else None,
        )


def _cursor(cursor: str | None) -> int | None:
    if not cursor:
        return None
    try:
        (before_id,) = decode_cursor(cursor, (int,))
    except DataexError:
        return None
    return int(before_id)
