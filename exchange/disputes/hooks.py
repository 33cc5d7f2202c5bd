"""What the disputes room needs of the rooms it draws on, as hooks the composition root
(`exchange.wiring.disputes`) fills in. Every hook runs in the caller's transaction (``conn``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from uuid import UUID

from exchange.platform.db import Connection
from exchange.platform.disputes import LedgerProofs, MoneyOutcome, SystemEvidence, TradeFacts


@dataclass(frozen=True, slots=True)
class DisputeHooks:
    # settlement: the trade (lock: FOR UPDATE on its row), or None for a trade it does not know
    facts: Callable[[Connection, UUID, bool], Awaitable[TradeFacts | None]]
    # settlement: reserved → disputed (trade, dispute, at, request id); else nothing
    hold: Callable[[Connection, UUID, UUID, datetime, str | None], Awaitable[None]]
    # settlement: disputed → reserved, with a new acceptance_due when given
    unhold: Callable[
        [Connection, UUID, UUID, datetime | None, datetime, str | None], Awaitable[None]
    ]
    # settlement: post the resolution exactly once (trade, dispute, refund, periods, at, request)
    resolve: Callable[
        [Connection, UUID, UUID, int, Sequence[int], datetime, str | None], Awaitable[MoneyOutcome]
    ]
    # settlement: a ledger entry (trade, dispute, step "evidence"|"resolution", digest, at): seq
    register: Callable[
        [Connection, UUID, UUID, Literal["evidence", "resolution"], str, datetime], Awaitable[int]
    ]
    # settlement: a signed tree head covering the entries and each one's inclusion proof
    proofs: Callable[[Connection, Sequence[int], datetime], Awaitable[LedgerProofs]]
    # every room: the trade's system evidence (contract, listing, grants, usage, receipts…)
    collect: Callable[[Connection, UUID, datetime], Awaitable[list[SystemEvidence]]]
    # delivery: suspend the trade's live grants (trade, reason text, at, request id)
    suspend_grants: Callable[[Connection, UUID, str, datetime, str | None], Awaitable[None]]
    # delivery: lift the dispute's suspension of the trade's grants
    lift_grants: Callable[[Connection, UUID, datetime, str | None], Awaitable[None]]
    # delivery: the trade has a live grant now (the seller may dispute only then)
    grant_live: Callable[[Connection, UUID, datetime], Awaitable[bool]]
    # delivery: lock the trade's grants. Taken first (after the dispute's own row) in every
    # transaction that changes a dispute: delivery locks a grant before its trade's settlement
    # row, settlement a trade before its accounts and the ledger, and so the order is one.
    lock_grants: Callable[[Connection, UUID], Awaitable[None]]
