"""The settlement trade's states and its transition table.

An executed trade is reserved (the buyer's payment held in escrow) or failed (no funds); in
the acceptance period the buyer accepts or objects, the parties may cancel together, and when
the period ends unobjected it settles. An objection waits for staff to resolve it.
"""

from __future__ import annotations

from typing import Final, Literal

from exchange.platform.states import StateMachine

TradeState = Literal["pending", "reserved", "disputed", "failed", "settled", "voided"]
TradeAction = Literal[
    "reserve", "fail", "accept", "settle_due", "object", "cancel", "resolve_for_seller",
    "resolve_for_buyer",
]  # fmt: skip

TRADE: Final[StateMachine[TradeState, TradeAction]] = StateMachine(
    aggregate="trade",
    states=TradeState,
    transitions={
        # executed, not yet seen by the settlement worker
        "pending": {"reserve": "reserved", "fail": "failed"},
        "reserved": {
            "accept": "settled",
            "settle_due": "settled",  # the acceptance period ended without an objection
            "object": "disputed",
            "cancel": "voided",  # both parties asked
        },
        "disputed": {
            "resolve_for_seller": "settled",
            "resolve_for_buyer": "voided",
            "cancel": "voided",
        },
        "failed": {},
        "settled": {},
        "voided": {},
    },
    internal=frozenset({"reserve", "fail", "settle_due"}),
)
