"""Settlement for staff: the dead letters (as ``GET /v1/settlement/failures`` lists them), the
ledger's latest signed tree head (as ``GET /v1/ledger/tree-heads/latest``), and a button that
runs the checks `dataex ledger verify` runs and shows what they found.

The API offers no action on a dead letter (no retry, no resolve), so neither does the page: it
shows each one with the state its trade has reached since, if any.

Verifying is bounded: one at a time per API process, and stopped after `VERIFY_LIMIT_SECONDS`
(the page says beforehand how long the ledger's size makes it take, and how far a stopped run
got). It reads and changes nothing, so its answer is the page itself (200), not a redirect.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, Final

from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.params import FromQuery
from litestar.response import Template

from exchange.console.web import ROOT, render
from exchange.platform.context import Platform
from exchange.platform.errors import Conflict, DataexError
from exchange.platform.paging import decode_cursor, encode_cursor
from settlement import figures, ledger
from settlement.verification import Verification, expected_seconds, verify_snapshot

PAGE: Final = 50
VERIFY_LIMIT_SECONDS: Final = 30.0
PROBLEMS_SHOWN: Final = 100  # a ledger tampered with throughout would list every entry
_LOCK: Final = "console.ledger_verification"


class SettlementPages(Controller):
    path = f"{ROOT}/settlement"

    @get("/")
    async def overview(
        self,
        request: Request[Any, Any, Any],
        platform: NamedDependency[Platform],
        cursor: FromQuery[str | None] = None,
    ) -> Template:
        return await _page(request, platform, cursor)

    @post("/verify")
    async def verify(
        self, request: Request[Any, Any, Any], platform: NamedDependency[Platform]
    ) -> Template:
        """Run the ledger's verification now and show its result on the page."""
        lock = platform.shared.setdefault(_LOCK, asyncio.Lock())
        assert isinstance(lock, asyncio.Lock)
        if lock.locked():
            return await _page(
                request, platform, None,
                problem=Conflict(
                    "a verification of the ledger is already running in this process:"
                    " wait for its result, then run it again"
                ),
            )  # fmt: skip
        async with lock:
            result, finished = await _verify(platform)
        return await _page(request, platform, None, verification=result, finished=finished)


async def _verify(platform: Platform) -> tuple[Verification, bool]:
    """The checks of `dataex ledger verify` (same bound for executed trades' outcomes), stopped
    after `VERIFY_LIMIT_SECONDS`; (the result so far, whether it finished)."""
    settings = platform.settings
    result = Verification()
    try:
        async with asyncio.timeout(VERIFY_LIMIT_SECONDS), platform.pool.acquire() as conn:
            await verify_snapshot(
                conn,
                executed_subject=settings.subject("trade", "executed"),
                after_seconds=settings.reconcile_after_seconds,
                into=result,
            )
    except TimeoutError:
        return result, False
    return result, True


async def _page(
    request: Request[Any, Any, Any],
    platform: Platform,
    cursor: str | None,
    *,
    problem: DataexError | None = None,
    verification: Verification | None = None,
    finished: bool = True,
) -> Template:
    before = _cursor(cursor)
    # One more than a page: is there a next page at all?
    letters = await figures.dead_letters(platform.pool, before=before, limit=PAGE + 1)
    more = len(letters) > PAGE
    letters = letters[:PAGE]
    counts = await figures.dead_letter_counts(platform.pool)
    async with platform.pool.acquire() as conn:
        head = await ledger.latest_tree_head(conn)
    entries = await figures.ledger_size(platform.pool)
    next_cursor = encode_cursor(letters[-1].failed_at, letters[-1].id) if more else None
    return render(
        request,
        "settlement.html",
        status_code=problem.status if problem else 200,
        problem=problem,
        letters=letters,
        counts=counts,
        head=head,
        head_time=_instant(head.timestamp) if head else None,
        entries=entries,
        expected=expected_seconds(entries),
        limit=VERIFY_LIMIT_SECONDS,
        verification=verification,
        finished=finished,
        shown=PROBLEMS_SHOWN,
        next_page=f"{ROOT}/settlement/?cursor={next_cursor}" if next_cursor else None,
        first_page=f"{ROOT}/settlement/" if before else None,
    )


def _cursor(cursor: str | None) -> tuple[datetime, int] | None:
    if not cursor:
        return None
    try:
        when, last = decode_cursor(cursor, (datetime, int))
    except DataexError:
        return None
    return when, last


def _instant(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None
