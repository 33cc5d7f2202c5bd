"""The order's and the contract's states and their transition tables (the orders room).

An order is placed into one of four states by its policy decision and the seller's terms
(`placed_state`); from there the tables below say where each action leads. The API's enums
come from `OrderState` and `ContractState`, so every state the API can return is documented.
"""

from __future__ import annotations

from typing import Final, Literal

from exchange.platform.states import StateMachine

OrderState = Literal[
    "in_review", "awaiting_signatures", "executed", "rejected", "cancelled", "expired"
]
OrderAction = Literal["approve", "approve_signed", "reject", "execute", "cancel", "expire"]

ORDER: Final[StateMachine[OrderState, OrderAction]] = StateMachine(
    aggregate="order",
    states=OrderState,
    transitions={
        "in_review": {
            "approve": "awaiting_signatures",
            # approved, and every signature was already given (custodial keys): executed
            "approve_signed": "executed",
            "reject": "rejected",
            "cancel": "cancelled",
        },
        "awaiting_signatures": {"execute": "executed", "cancel": "cancelled", "expire": "expired"},
        "executed": {},
        "rejected": {},
        "cancelled": {},
        "expired": {},
    },
    internal=frozenset({"approve_signed", "expire"}),
)

ContractState = Literal["awaiting_signatures", "executed", "cancelled", "expired", "unfunded"]
ContractAction = Literal["sign", "execute", "cancel", "expire", "unfund"]

CONTRACT: Final[StateMachine[ContractState, ContractAction]] = StateMachine(
    aggregate="contract",
    states=ContractState,
    transitions={
        "awaiting_signatures": {
            "sign": "awaiting_signatures",  # one party's signature; the last one executes
            "execute": "executed",
            "cancel": "cancelled",
            "expire": "expired",
        },
        # settlement could not reserve the buyer's payment: the trade is void
        "executed": {"unfund": "unfunded"},
        "cancelled": {},
        "expired": {},
        "unfunded": {},
    },
    internal=frozenset({"execute", "expire", "unfund"}),
)


def placed_state(decision: str, held: bool) -> OrderState:
    """The state a new order starts in: rejected by the lists, held for staff review over a
    cautious hit not yet cleared, or accepted and awaiting signatures (then ``execute`` at once
    when every signature is already there)."""
    if decision == "reject":
        return "rejected"
    return "in_review" if held else "awaiting_signatures"
