"""The delivery grant's states and its transition table (the delivery room's aggregate).

A grant is created ``pending`` when a trade executes and becomes ``active`` when settlement has
reserved the buyer's payment. It is ``suspended`` while any cause holds (the listing, the buyer
or the seller suspended, the spend cap reached, a dispute, the exchange's staff) — the causes
are a column, so lifting one does not lift another — and resumes when none is left. It ends
``exhausted`` (a quota used up; a top-up or a raised quota brings it back), ``expired`` (its
term is over) or ``revoked`` (the product delisted, the trade voided, staff).
"""

from __future__ import annotations

from typing import Final, Literal

from exchange.platform.events import GrantState
from exchange.platform.states import StateMachine

GrantAction = Literal[
    "activate", "suspend", "resume", "resume_pending", "exhaust", "replenish", "expire",
    "revoke", "change",
]  # fmt: skip
SuspendCause = Literal["listing", "buyer", "seller", "spend_cap", "dispute", "exchange"]
Mode = Literal["file", "api", "sandbox"]
LIVE: Final = ("pending", "active", "suspended")

GRANT: Final[StateMachine[GrantState, GrantAction]] = StateMachine(
    aggregate="grant",
    states=GrantState,
    transitions={
        "pending": {
            "activate": "active",
            "suspend": "suspended",
            "revoke": "revoked",
            "expire": "expired",
            "change": "pending",
        },
        "active": {
            "suspend": "suspended",
            "exhaust": "exhausted",
            "expire": "expired",
            "revoke": "revoked",
            "change": "active",
        },
        "suspended": {
            "suspend": "suspended",  # another cause
            "activate": "suspended",  # reserved while suspended: active once resumed
            "resume": "active",
            "resume_pending": "pending",  # the last cause lifted before the payment was held
            "exhaust": "suspended",
            "expire": "expired",
            "revoke": "revoked",
            "change": "suspended",
        },
        "exhausted": {
            "replenish": "active",
            "suspend": "exhausted",
            "expire": "expired",
            "revoke": "revoked",
            "change": "exhausted",
        },
        "expired": {},
        "revoked": {},
    },
    internal=frozenset({"activate", "resume_pending", "exhaust", "replenish", "expire", "change"}),
)

# The CloudEvent type each action announces.
EVENT_OF: Final[dict[GrantAction, str]] = {
    "activate": "dx.grant.activated",
    "suspend": "dx.grant.suspended",
    "resume": "dx.grant.resumed",
    "resume_pending": "dx.grant.resumed",
    "exhaust": "dx.grant.exhausted",
    "replenish": "dx.grant.resumed",
    "expire": "dx.grant.expired",
    "revoke": "dx.grant.revoked",
    "change": "dx.grant.changed",
}
