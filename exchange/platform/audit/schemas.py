from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from msgspec import Struct


class AuditEntry(Struct):
    id: int
    at: datetime
    actor: str
    actor_org_id: uuid.UUID | None
    actor_token_id: uuid.UUID | None
    action: str
    subject_type: str
    subject_id: str
    request_id: str | None
    before_digest: str | None
    after_digest: str | None
    detail: dict[str, Any]


class AuditPage(Struct):
    items: list[AuditEntry]
    next_cursor: str | None
