"""State machines of the aggregates: one table per aggregate, one 409 for an illegal step.

Each room keeps its aggregate's states (a ``Literal``, which the API's enums come from) and its
transition table in one module (``exchange/listings/states.py``, ``contracts/orders/states.py``,
…) as a `StateMachine`. Services ask the machine for the next state instead of writing state
names into SQL by hand, and every illegal step is the same problem: 409 ``illegal-transition``
naming the aggregate, its state, the action refused and the actions allowed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, get_args

from exchange.platform.errors import Conflict

S = TypeVar("S", bound=str)
A = TypeVar("A", bound=str)


class IllegalTransition(Conflict):
    code = "illegal_transition"
    title = "Illegal state transition"


@dataclass(frozen=True, slots=True)
class StateMachine(Generic[S, A]):
    """``transitions[state][action]`` is the state after ``action``; a state with no actions is
    final. ``states`` is the aggregate's ``Literal`` type: every state it names has a row.
    ``internal`` actions are taken by the exchange itself (a deadline, another room's news),
    never asked for by a caller, so a 409 does not offer them."""

    aggregate: str
    states: Any  # the Literal type of the states (what the API's enum shows)
    transitions: Mapping[S, Mapping[A, S]]
    internal: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        named = set(get_args(self.states))
        assert named == set(self.transitions), (self.aggregate, named ^ set(self.transitions))
        for row in self.transitions.values():
            assert set(row.values()) <= named, (self.aggregate, set(row.values()) - named)

    def allowed(self, state: S) -> list[A]:
        """The actions a caller may ask for in ``state``."""
        return sorted(a for a in self.transitions[state] if a not in self.internal)

    def allows(self, state: S, action: A) -> bool:
        return action in self.transitions[state]

    def is_final(self, state: S) -> bool:
        return not self.transitions[state]

    def next(self, state: S, action: A) -> S:
        """The state after ``action``, or `IllegalTransition` (409) saying what is allowed."""
        allowed = self.transitions[state]
        if action not in allowed:
            names = self.allowed(state)
            raise IllegalTransition(
                f"cannot {action.replace('_', ' ')} a {self.aggregate} that is {state};"
                f" allowed: {', '.join(names) or 'nothing (final state)'}",
                extensions={
                    "aggregate": self.aggregate,
                    "state": state,
                    "action": action,
                    "allowed_actions": names,
                },
            )
        return allowed[action]
