"""SQL for published policy lists and stored decisions."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from contracts.policy.schemas import Decision, PolicyListInfo
from exchange.platform.db import Connection, Executor
from exchange.platform.rows import Row, columns, unnest


def _info(row: asyncpg.Record, now: datetime, current_version: str | None) -> PolicyListInfo:
    return PolicyListInfo(
        version=row["version"],
        digest=row["digest"],
        title=row["title"],
        effective_from=row["effective_from"],
        published_at=row["published_at"],
        published_by=row["published_by"],
        current=row["version"] == current_version,
    )


async def current_version(conn: Executor, at: datetime) -> str | None:
    version: str | None = await conn.fetchval(
        "SELECT version FROM policy_lists WHERE effective_from <= $1"
        " ORDER BY effective_from DESC LIMIT 1",
        at,
    )
    return version


async def list_infos(conn: Executor, now: datetime) -> list[PolicyListInfo]:
    current = await current_version(conn, now)
    rows = await conn.fetch("SELECT * FROM policy_lists ORDER BY effective_from")
    return [_info(row, now, current) for row in rows]


async def get_row(conn: Executor, version: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM policy_lists WHERE version = $1", version)


async def get_info(conn: Executor, version: str, now: datetime) -> PolicyListInfo | None:
    row = await get_row(conn, version)
    return None if row is None else _info(row, now, await current_version(conn, now))


async def latest_effective_from(conn: Executor) -> datetime | None:
    latest: datetime | None = await conn.fetchval("SELECT max(effective_from) FROM policy_lists")
    return latest


async def insert_list(
    conn: Connection,
    *,
    version: str,
    digest: str,
    title: str,
    source: str,
    document: dict[str, Any],
    effective_from: datetime,
    published_at: datetime,
    published_by: str,
) -> None:
    await conn.execute(
        """
        INSERT INTO policy_lists (version, digest, title, source, document, effective_from,
                                  published_at, published_by)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        """,
        version,
        digest,
        title,
        source,
        document,
        effective_from,
        published_at,
        published_by,
    )


async def insert_decision(
    conn: Connection,
    *,
    subject_type: str,
    subject_id: str,
    document: Any,
    decision: Decision,
    at: datetime,
    open_subject: bool = True,
) -> int:
    # One statement: the decision and the subject's pointer to it.
    decision_id: int = await conn.fetchval(
        """
        WITH decided AS (
            INSERT INTO policy_decisions (subject_type, subject_id, list_version, list_digest,
                                          outcome, document, decision, decided_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            RETURNING id
        ), subject AS (
            INSERT INTO policy_subjects (subject_type, subject_id, open, latest_decision)
            SELECT $1, $2, $9, id FROM decided
            ON CONFLICT (subject_type, subject_id)
            DO UPDATE SET latest_decision = EXCLUDED.latest_decision, open = EXCLUDED.open
        )
        SELECT id FROM decided
        """,
        subject_type,
        subject_id,
        decision.list_version,
        decision.list_digest,
        decision.decision,
        msgspec.to_builtins(document),
        msgspec.to_builtins(decision),
        at,
        open_subject,
    )
    return decision_id


class DecisionRow(Row, frozen=True):
    """A policy decision and whether its subject stays open, for a statement that records
    many (the order path's single write): see `decision_ctes`."""

    __table__ = "policy_decisions"
    subject_type: str
    subject_id: str
    list_version: str
    list_digest: str
    outcome: str
    document: dict[str, Any]
    decision: dict[str, Any]
    decided_at: datetime
    open: bool


def decision_ctes(first: int) -> list[str]:
    """CTEs that write `DecisionRow` arrays given as parameters from ``first``: each decision
    and its subject's pointer to it (as `insert_decision` does for one)."""
    names = ", ".join(name for name, _ in columns(DecisionRow))
    stored = ", ".join(name for name, _ in columns(DecisionRow) if name != "open")
    return [
        f"decided_in AS (SELECT * FROM {unnest(DecisionRow, first)} AS d({names}))",
        f"decided AS (INSERT INTO policy_decisions ({stored}) SELECT {stored} FROM decided_in"
        " RETURNING id, subject_type, subject_id)",
        "subject AS (INSERT INTO policy_subjects (subject_type, subject_id, open,"
        " latest_decision) SELECT d.subject_type, d.subject_id, i.open, d.id"
        " FROM decided d JOIN decided_in i USING (subject_type, subject_id)"
        " ON CONFLICT (subject_type, subject_id) DO UPDATE"
        " SET latest_decision = EXCLUDED.latest_decision, open = EXCLUDED.open)",
    ]


async def set_subject_open(
    conn: Executor, subject_type: str, subject_id: str, is_open: bool
) -> None:
    await conn.execute(
        "UPDATE policy_subjects SET open = $3 WHERE subject_type = $1 AND subject_id = $2",
        subject_type,
        subject_id,
        is_open,
    )


async def open_subject_decisions(
    conn: Executor, *, after: tuple[str, str] | None, limit: int
) -> list[asyncpg.Record]:
    """The latest decision of each open subject, keyset-paged by (type, id)."""
    key = after or ("", "")
    return await conn.fetch(
        """
        SELECT s.subject_type, s.subject_id, d.document, d.decision
        FROM policy_subjects s JOIN policy_decisions d ON d.id = s.latest_decision
        WHERE s.open AND (s.subject_type, s.subject_id) > ($1, $2)
        ORDER BY s.subject_type, s.subject_id
        LIMIT $3
        """,
        key[0],
        key[1],
        limit,
    )
