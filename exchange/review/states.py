"""The review case's states and its transition table."""

from __future__ import annotations

from typing import Final, Literal

from exchange.platform.states import StateMachine

CaseState = Literal["open", "approved", "changes_requested", "rejected"]
# A reviewer's verdicts, and `withdraw`: the subject went away while the case was open (the
# product was delisted, the order cancelled); the case closes as rejected.
CaseAction = Literal["approve", "request_changes", "reject", "withdraw"]

CASE: Final[StateMachine[CaseState, CaseAction]] = StateMachine(
    aggregate="review case",
    states=CaseState,
    transitions={
        "open": {
            "approve": "approved",
            "request_changes": "changes_requested",
            "reject": "rejected",
            "withdraw": "rejected",
        },
        "approved": {},
        "changes_requested": {},
        "rejected": {},
    },
    internal=frozenset({"withdraw"}),
)
