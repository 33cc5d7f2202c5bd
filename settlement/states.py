"""The settlement trade's states and its transition tables.

An executed trade is reserved (the buyer's payment held in escrow) or failed (no funds); in
the acceptance period the buyer accepts or objects, the parties may cancel together, and when
the period ends unobjected it settles. An objection waits for staff to resolve it.

A metered trade (a plan billed by use) has the same states and its own table: its reservation
is the buyer's spend cap, never posted whole. Each closed billing period posts what it charged
and top-ups raise the reservation while it is reserved; when its grant ends it is released:
settled if any period charged something, voided if none did, the rest back to the buyer either
way. Accepting, objecting and cancelling act on a whole payment, so a metered trade has none of
them (disputes over usage come with dispute resolution).
"""

from __future__ import annotations

from typing import Final, Literal

from exchange.platform.states import StateMachine

TradeState = Literal["pending", "reserved", "disputed", "failed", "settled", "voided"]
TradeAction = Literal[
    "reserve", "fail", "accept", "settle_due", "object", "cancel", "resolve_for_seller",
    "resolve_for_buyer", "post_usage", "top_up", "release_used", "release_unused",
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

# Every step of a metered trade is taken by the exchange: the settlement worker reserves it,
# and the delivery room (through the hooks the composition root gives it) posts its periods,
# raises its reservation when the buyer asks and releases it when the grant ends.
METERED_TRADE: Final[StateMachine[TradeState, TradeAction]] = StateMachine(
    aggregate="metered trade",
    states=TradeState,
    transitions={
        "pending": {"reserve": "reserved", "fail": "failed"},
        "reserved": {
            "post_usage": "reserved",  # a closed billing period, out of the reservation
            "top_up": "reserved",
            "release_used": "settled",  # the grant ended; some periods charged
            "release_unused": "voided",  # the grant ended; nothing was charged
        },
        "disputed": {},  # not reached: a metered trade has no objection (see above)
        "failed": {},
        "settled": {},
        "voided": {},
    },
    internal=frozenset(
        {"reserve", "fail", "post_usage", "top_up", "release_used", "release_unused"}
    ),
)
