"""The settlement trade's states and its transition tables.

An executed trade is reserved (the buyer's payment held in escrow) or failed (no funds); in
the acceptance period the buyer accepts, the parties may cancel together, and when the period
ends it settles. A dispute (the disputes room, through `settlement.disputes`) holds it
(``disputed``: nothing is posted, even when the period ends) until it is resolved: released to
the seller (settled), refunded (voided), split between them (``split``), or the hold lifted
(back to reserved, with a new acceptance period when one is given).

A metered trade (a plan billed by use) has the same states and its own table: its reservation
is the buyer's spend cap, never posted whole. Each closed billing period posts what it charged
and top-ups raise the reservation while it is reserved; when its grant ends it is released:
settled if any period charged something, voided if none did, the rest back to the buyer either
way. Accepting and cancelling act on a whole payment, so a metered trade has neither. A dispute
holds it too: while it is disputed no period is posted and it is not released (the delivery
room waits); a resolution refunds the buyer from what named periods paid (``refund``) and lifts
the hold.
"""

from __future__ import annotations

from typing import Final, Literal

from exchange.platform.states import StateMachine

TradeState = Literal["pending", "reserved", "disputed", "failed", "settled", "voided", "split"]
TradeAction = Literal[
    "reserve", "fail", "accept", "settle_due", "cancel", "dispute", "release_hold",
    "resolve_release", "resolve_refund", "resolve_split", "refund", "post_usage", "top_up",
    "release_used", "release_unused",
]  # fmt: skip

TRADE: Final[StateMachine[TradeState, TradeAction]] = StateMachine(
    aggregate="trade",
    states=TradeState,
    transitions={
        # executed, not yet seen by the settlement worker
        "pending": {"reserve": "reserved", "fail": "failed"},
        "reserved": {
            "accept": "settled",
            "settle_due": "settled",  # the acceptance period ended without a dispute
            "dispute": "disputed",  # a dispute opened: the payment is held
            "cancel": "voided",  # both parties asked
        },
        "disputed": {
            "release_hold": "reserved",  # redeliver, extend acceptance, withdrawn
            "resolve_release": "settled",  # for the seller
            "resolve_refund": "voided",  # for the buyer, all of it
            "resolve_split": "split",  # part to the buyer, the rest to the seller (and fee)
            # no cancel: while a dispute holds the trade, its resolution (or the parties'
            # agreement on one) is the only way out, so the two never disagree
        },
        "failed": {},
        "settled": {},
        "voided": {},
        "split": {},
    },
    # Disputes act through the disputes room (`settlement.disputes`), never a trade route.
    internal=frozenset(
        {
            "reserve",
            "fail",
            "settle_due",
            "dispute",
            "release_hold",
            "resolve_release",
            "resolve_refund",
            "resolve_split",
        }
    ),
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
            "dispute": "disputed",
        },
        "disputed": {
            "top_up": "disputed",  # more reserved is harmless; nothing is posted meanwhile
            "refund": "disputed",  # resolved: from what named periods paid back to the buyer
            "release_hold": "reserved",
        },
        "failed": {},
        "settled": {},
        "voided": {},
        "split": {},  # not reached: a metered trade is refunded, never split
    },
    internal=frozenset(
        {
            "reserve",
            "fail",
            "post_usage",
            "top_up",
            "release_used",
            "release_unused",
            "dispute",
            "refund",
            "release_hold",
        }
    ),
)
