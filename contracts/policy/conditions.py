"""Conditions as data, compiled to closures. Nothing from a rule file is ever evaluated as code.

A condition is a leaf ``{field = "<attribute path>", <operator> = <value>}`` or a combination
``{all = [...]}``, ``{any = [...]}``, ``{not = {...}}``, ``{ref = "<definition>"}``.
A compiled `Condition` has ``test(doc) -> bool``, the fast path every rule runs, and
``explain(doc) -> facts``: the ``(path, value)`` pairs that decided the outcome, computed only
for the rules that fired, so a hit can say what made it fire.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from contracts.policy.attributes import ATTRIBUTES, Attribute

Doc = Mapping[str, Any]
Facts = tuple[tuple[str, Any], ...]

COMPARISONS = ("gt", "gte", "lt", "lte")
LEAF_OPERATORS = ("equals", "not_equals", "in", "not_in", "any_of", "all_of", "empty", *COMPARISONS)
LOGICAL = ("all", "any", "not", "ref")
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


@dataclass(frozen=True, slots=True)
class Condition:
    test: Callable[[Doc], bool]
    explain: Callable[[Doc], Facts]


_NEVER = Condition(lambda _doc: False, lambda _doc: ())


@dataclass(frozen=True, slots=True)
class ConditionError:
    """Where in the condition (a dotted location) and what is wrong."""

    location: str
    message: str


class _Compiler:
    def __init__(
        self, definitions: Mapping[str, Any], scope: str, errors: list[ConditionError]
    ) -> None:
        self.definitions = definitions
        self.scope = scope
        self.errors = errors
        self.compiled_refs: dict[str, Condition] = {}
        self.resolving: set[str] = set()

    def fail(self, location: str, message: str) -> Condition:
        self.errors.append(ConditionError(location, message))
        return _NEVER

    def compile(self, node: Any, location: str) -> Condition:
        if not isinstance(node, dict):
            return self.fail(location, f"a condition is a table, got {type(node).__name__}")
        logical = [key for key in node if key in LOGICAL]
        if logical:
            if len(node) != 1:
                extra = sorted(set(node) - {logical[0]})
                return self.fail(location, f"'{logical[0]}' stands alone; unexpected {extra}")
            key = logical[0]
            combine: dict[str, Callable[[Any, str], Condition]] = {
                "all": self._all,
                "any": self._any,
                "not": self._not,
                "ref": self._ref,
            }
            return combine[key](node[key], f"{location}.{key}")
        if "field" not in node:
            unknown = sorted(set(node) - {"field", *LEAF_OPERATORS})
            if unknown:
                return self.fail(location, f"unknown operator {unknown[0]!r}")
            return self.fail(location, "a leaf condition needs 'field'")
        return self._leaf(node, location)

    def _all(self, items: Any, location: str) -> Condition:
        parts = self._list(items, location)
        tests = tuple(part.test for part in parts)

        def test(doc: Doc) -> bool:
            for t in tests:  # noqa: SIM110 - a plain loop is measurably faster than all()
                if not t(doc):
                    return False
            return True

        def explain(doc: Doc) -> Facts:
            facts: Facts = ()
            for part in parts:
                if not part.test(doc):
                    return part.explain(doc)  # the first part that fails decides
                facts += part.explain(doc)
            return facts

        return Condition(test, explain)

    def _any(self, items: Any, location: str) -> Condition:
        parts = self._list(items, location)
        tests = tuple(part.test for part in parts)

        def test(doc: Doc) -> bool:
            for t in tests:  # noqa: SIM110 - a plain loop is measurably faster than any()
                if t(doc):
                    return True
            return False

        def explain(doc: Doc) -> Facts:
            held = [part for part in parts if part.test(doc)]
            facts: Facts = ()
            for part in held or parts:  # every part that holds, or all of them if none does
                facts += part.explain(doc)
            return facts

        return Condition(test, explain)

    def _not(self, item: Any, location: str) -> Condition:
        inner = self.compile(item, location)
        inner_test = inner.test
        return Condition(lambda doc: not inner_test(doc), inner.explain)

    def _ref(self, name: Any, location: str) -> Condition:
        if not isinstance(name, str) or name not in self.definitions:
            return self.fail(location, f"unknown definition {name!r}")
        if name in self.resolving:
            return self.fail(location, f"definition {name!r} refers to itself")
        if name not in self.compiled_refs:
            self.resolving.add(name)
            self.compiled_refs[name] = self.compile(self.definitions[name], f"definitions.{name}")
            self.resolving.discard(name)
        return self.compiled_refs[name]

    def _list(self, items: Any, location: str) -> list[Condition]:
        if not isinstance(items, list) or not items:
            self.fail(location, "needs a non-empty array of conditions")
            return []
        return [self.compile(item, f"{location}[{i}]") for i, item in enumerate(items)]

    def _leaf(self, node: dict[str, Any], location: str) -> Condition:
        path = node["field"]
        operators = [key for key in node if key != "field"]
        unknown = [key for key in operators if key not in LEAF_OPERATORS]
        if unknown:
            return self.fail(location, f"unknown operator {unknown[0]!r}")
        if len(operators) != 1:
            return self.fail(location, "a leaf condition has exactly one operator")
        attribute = ATTRIBUTES.get(path) if isinstance(path, str) else None
        if attribute is None:
            return self.fail(f"{location}.field", f"unknown attribute {path!r}")
        if attribute.scope == "order" and self.scope == "product":
            return self.fail(
                f"{location}.field",
                f"attribute {path!r} exists only for orders; a product-scope rule cannot test it",
            )
        operator = operators[0]
        value = node[operator]
        problem = _check_value(attribute, operator, value)
        if problem:
            return self.fail(f"{location}.{operator}", problem)
        return _leaf_closure(path, operator, value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_value(attribute: Attribute, operator: str, value: Any) -> str | None:
    kind = attribute.kind
    if operator == "empty":
        if kind != "list":
            return f"'empty' applies to lists; {attribute.path} is {kind}"
        return None if isinstance(value, bool) else "'empty' takes true or false"
    if operator in ("any_of", "all_of"):
        if kind != "list":
            return f"'{operator}' applies to lists; {attribute.path} is {kind}"
        return _check_members(attribute, value)
    if kind == "list":
        return (
            f"'{operator}' does not apply to the list {attribute.path}; use any_of, all_of, empty"
        )
    if operator in COMPARISONS:
        if kind != "int":
            return f"'{operator}' compares numbers; {attribute.path} is {kind}"
        return None if _is_int(value) else f"'{operator}' needs an integer, got {value!r}"
    if operator in ("in", "not_in"):
        return _check_members(attribute, value)
    return _check_scalar(attribute, value)


def _check_members(attribute: Attribute, value: Any) -> str | None:
    if not isinstance(value, list) or not value:
        return "needs a non-empty array of values"
    for item in value:
        problem = _check_scalar(attribute, item)
        if problem:
            return problem
    return None


def _check_scalar(attribute: Attribute, value: Any) -> str | None:
    kind = attribute.kind
    if kind == "bool" and not isinstance(value, bool):
        return f"{attribute.path} is a boolean; got {value!r}"
    if kind == "int" and not _is_int(value):
        return f"{attribute.path} is an integer; got {value!r}"
    if kind in ("str", "list"):
        if not isinstance(value, str):
            return f"{attribute.path} takes text values; got {value!r}"
        if attribute.allowed is not None and value not in attribute.allowed:
            values = ", ".join(sorted(attribute.allowed))
            return f"{value!r} is not a value of {attribute.path} ({values})"
    return None


def _leaf_closure(path: str, operator: str, value: Any) -> Condition:
    def fact(doc: Doc) -> Facts:
        return ((path, doc.get(path)),)

    test: Callable[[Doc], bool]
    if operator in ("equals", "not_equals"):
        wanted = operator == "equals"
        expected: object = value

        def test(doc: Doc) -> bool:
            return (doc.get(path) == expected) is wanted

    elif operator in ("in", "not_in"):
        members = frozenset(value)
        inside = operator == "in"

        def test(doc: Doc) -> bool:
            return (doc.get(path) in members) == inside

    elif operator == "any_of":
        wanted_items = frozenset(value)

        def test(doc: Doc) -> bool:
            return not wanted_items.isdisjoint(doc.get(path) or ())

        def matched(doc: Doc) -> Facts:
            items = list(doc.get(path) or ())
            return ((path, [item for item in items if item in wanted_items] or items),)

        return Condition(test, matched)
    elif operator == "all_of":
        required = frozenset(value)

        def test(doc: Doc) -> bool:
            return required.issubset(doc.get(path) or ())

    elif operator == "empty":
        empty = bool(value)

        def test(doc: Doc) -> bool:
            return (not doc.get(path)) == empty

    else:
        bound = int(value)
        compare = _COMPARE[operator]

        def test(doc: Doc) -> bool:
            actual = doc.get(path)
            return actual is not None and bool(compare(actual, bound))

    return Condition(test, fact)


def compile_condition(
    node: Any,
    *,
    location: str,
    definitions: Mapping[str, Any],
    scope: str,
    errors: list[ConditionError],
) -> Condition:
    """Compile ``node``; problems are appended to ``errors`` (the result is then unusable)."""
    return _Compiler(definitions, scope, errors).compile(node, location)
