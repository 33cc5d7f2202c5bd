"""The product's states and its transition table (the listing room's aggregate).

A product of this exchange goes draft → in_review → listed through its own review; a product
recognised from a peer goes straight to listed on the origin's certificate, and the origin's
feed, trust withdrawn and given back, and this exchange's own negative list move it after.
Why a product is suspended is `SuspendedBy`, a column of its own, never a phrase in the reason.
"""

from __future__ import annotations

from typing import Final, Literal

from exchange.platform.states import StateMachine

ProductState = Literal[
    "draft", "in_review", "changes_requested", "rejected", "listed", "suspended", "delisted"
]
Action = Literal[
    # the seller and this exchange's staff
    "edit", "submit", "approve", "request_changes", "reject", "suspend", "reinstate", "delist",
    "revise",
    # the negative list, at submission
    "policy_reject",
    # a product recognised from a peer exchange
    "recognise", "origin_suspend", "origin_delist", "distrust", "retrust", "refuse_here",
    # staff suspend the listing pending a third party's objection (its decision reinstates it)
    "hold_for_objection",
]  # fmt: skip

# Who suspended a product: this exchange's staff, the origin exchange (its feed), withdrawn
# trust in the origin, this exchange's negative list refusing the origin's newer revision, or
# staff pending a third party's objection (exchange.listings.objections).
SuspendedBy = Literal["exchange", "origin", "distrust", "local_policy", "objection"]
SUSPENDING: Final[dict[str, SuspendedBy]] = {
    "suspend": "exchange",
    "hold_for_objection": "objection",
    "origin_suspend": "origin",
    "distrust": "distrust",
    "refuse_here": "local_policy",
}

PRODUCT: Final[StateMachine[ProductState, Action]] = StateMachine(
    aggregate="product",
    states=ProductState,
    transitions={
        "draft": {
            "edit": "draft",
            "submit": "in_review",
            "policy_reject": "rejected",  # submitted, and a negative-list rule hits
            "recognise": "listed",
        },
        "changes_requested": {
            "edit": "changes_requested",
            "submit": "in_review",
            "policy_reject": "rejected",
        },
        "in_review": {
            "approve": "listed",
            "request_changes": "changes_requested",
            "reject": "rejected",
        },
        "listed": {
            "suspend": "suspended",
            "hold_for_objection": "suspended",
            "delist": "delisted",
            "revise": "listed",
            "recognise": "listed",
            "origin_suspend": "suspended",
            "origin_delist": "delisted",
            "distrust": "suspended",
            "refuse_here": "suspended",
        },
        "suspended": {
            "reinstate": "listed",
            "delist": "delisted",
            "recognise": "listed",
            "origin_suspend": "suspended",
            "origin_delist": "delisted",
            "retrust": "listed",
            "refuse_here": "suspended",
        },
        "rejected": {},
        "delisted": {},
    },
    internal=frozenset(
        {
            "policy_reject",
            "recognise",
            "origin_suspend",
            "origin_delist",
            "distrust",
            "retrust",
            "refuse_here",
            "hold_for_objection",
        }
    ),
)


def next_state(state: ProductState, action: Action) -> ProductState:
    """The state after ``action``, or a 409 naming the current state and the allowed actions."""
    return PRODUCT.next(state, action)


def held_here(state: ProductState, suspended_by: SuspendedBy | None) -> bool:
    """Whether this exchange's own decision keeps the product off the market: delisted, or
    suspended by its staff (on their own or pending an objection). The origin's news (a newer
    revision, a reinstatement) never undoes that; it undoes an origin's suspension, distrust
    and a local refusal."""
    return state == "delisted" or (
        state == "suspended" and suspended_by in ("exchange", "objection")
    )


# --- objections to a registration (异议登记) ---------------------------------------------------

ObjectionClaim = Literal["ownership", "licence", "personal_information", "trade_secret", "other"]
ObjectionState = Literal["registered", "upheld", "dismissed"]
ObjectionAction = Literal["suspend_listing", "uphold", "dismiss"]

# A third party's objection is registered, may hold the listing suspended meanwhile, and is
# decided once: upheld or dismissed. Decided objections stay, as the record of the decision.
OBJECTION: Final[StateMachine[ObjectionState, ObjectionAction]] = StateMachine(
    aggregate="listing objection",
    states=ObjectionState,
    transitions={
        "registered": {
            "suspend_listing": "registered",
            "uphold": "upheld",
            "dismiss": "dismissed",
        },
        "upheld": {},
        "dismissed": {},
    },
)
DECIDING: Final[dict[str, ObjectionAction]] = {"upheld": "uphold", "dismissed": "dismiss"}
