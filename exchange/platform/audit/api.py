"""``GET /v1/audit``: the audit trail for admins, filtered and keyset-paged."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter

from exchange.platform.audit.repository import list_entries
from exchange.platform.audit.schemas import AuditPage
from exchange.platform.auth import requires
from exchange.platform.context import Platform
from exchange.platform.paging import DEFAULT_PAGE, check_limit, decode_cursor, encode_cursor


class AuditController(Controller):
    path = "/v1/audit"
    tags = ["audit"]

    @get("/", operation_id="listAudit", opt=requires("admin"))
    async def list_audit(
        self,
        platform: NamedDependency[Platform],
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = DEFAULT_PAGE,
        cursor: FromQuery[str | None] = None,
        action: FromQuery[str | None] = None,
        subject_type: FromQuery[str | None] = None,
        subject_id: FromQuery[str | None] = None,
        actor_org_id: FromQuery[uuid.UUID | None] = None,
        since: Annotated[
            datetime | None, QueryParameter(description="at or after (RFC 3339)")
        ] = None,
        until: Annotated[datetime | None, QueryParameter(description="before (RFC 3339)")] = None,
    ) -> AuditPage:
        """Newest first. ``next_cursor`` continues the same filtered listing."""
        (before_id,) = decode_cursor(cursor, (int,)) if cursor else (None,)
        items = await list_entries(
            platform.pool,
            limit=check_limit(limit),
            before_id=before_id,
            action=action,
            subject_type=subject_type,
            subject_id=subject_id,
            actor_org_id=actor_org_id,
            since=since,
            until=until,
        )
        next_cursor = encode_cursor(items[-1].id) if len(items) == limit else None
        return AuditPage(items=items, next_cursor=next_cursor)
