"""The disputes room's deadline sweep: awaiting_response past its deadline → under_review.

Run by the settlement part (`exchange.runtime`), beside the settlement worker's loops."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

from exchange.disputes.service import DisputeService
from exchange.platform.logging import get_logger

log = get_logger(__name__)
SWEEP_SECONDS: Final = 10.0


async def deadline_loop(
    stop: asyncio.Event, service: DisputeService, every: float = SWEEP_SECONDS
) -> None:
    """Every ``every`` seconds until ``stop``, move the disputes whose respondent's deadline
    passed; a failed round is logged and tried again next time."""
    while not stop.is_set():
        try:
            moved = await service.move_due()
            if moved:
                log.info("disputes_to_review", moved=moved)
        except Exception as error:  # noqa: BLE001 - the next round retries
            log.warning("dispute_sweep_failed", error=str(error))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
