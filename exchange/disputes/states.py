"""A dispute's states and its one transition table (the disputes room's aggregate).

``opened`` → ``awaiting_response`` (in the opening transaction: the respondent has
``dispute_response_days`` to answer) → ``under_review`` (the respondent answered, or the
deadline passed: ``respondent_deadline``) → ``resolved`` (staff; two reviewers at or above
``dispute_four_eyes_fen``) → ``closed``. From awaiting_response or under_review the parties may
also settle (``agree``: both signed the same resolution digest) → ``settled_by_agreement`` →
``closed``; a party may ``escalate`` to arbitration outside the exchange → ``escalated`` (escrow
stays frozen) → ``record_award`` → ``resolved`` (staff; two admins at or above the same
amount); the claimant may ``withdraw`` → ``closed``.
``resolved`` and ``settled_by_agreement`` are closed in the transaction that moves the money.
Every step is a CloudEvent ``dx.dispute.<state>``.
"""

from __future__ import annotations

from typing import Final, Literal

from exchange.platform.events import DisputeState
from exchange.platform.states import StateMachine

DisputeAction = Literal[
    "notify", "respond", "respondent_deadline", "resolve", "agree", "escalate", "record_award",
    "withdraw", "close",
]  # fmt: skip

_SETTLE: Final[dict[DisputeAction, DisputeState]] = {
    "agree": "settled_by_agreement",
    "escalate": "escalated",
    "withdraw": "closed",
}

DISPUTE: Final[StateMachine[DisputeState, DisputeAction]] = StateMachine(
    aggregate="dispute",
    states=DisputeState,
    transitions={
        "opened": {"notify": "awaiting_response"},
        "awaiting_response": {
            "respond": "under_review",
            "respondent_deadline": "under_review",
            **_SETTLE,
        },
        "under_review": {"resolve": "resolved", **_SETTLE},
        "escalated": {"record_award": "resolved"},
        "resolved": {"close": "closed"},
        "settled_by_agreement": {"close": "closed"},
        "closed": {},
    },
    internal=frozenset({"notify", "respondent_deadline", "close"}),
)
# A dispute in one of these holds its trade: one at a time per trade.
OPEN: Final = frozenset(s for s in DISPUTE.transitions if s != "closed")
