"""The decision: what the evaluator returns, the API answers, and decisions store."""

from __future__ import annotations

import builtins
from typing import Any, Literal

from msgspec import Struct

Outcome = Literal["allow", "review", "reject"]
Route = Literal["none", "exempt", "standard_contract_or_certification", "security_assessment"]


class Fact(Struct, frozen=True):
    """An attribute of the document and its value, as it made a rule fire."""

    path: str
    value: Any


class EvidenceItem(Struct, frozen=True):
    code: str
    zh: str
    en: str


class Hit(Struct, frozen=True):
    rule: str
    list: Literal["negative", "cautious"]
    scope: Literal["product", "order"]
    title_zh: str
    title_en: str
    explanation_zh: str
    explanation_en: str
    remedy_zh: str
    remedy_en: str
    evidence_required: builtins.list[EvidenceItem]
    four_eyes: bool
    facts: builtins.list[Fact]
    basis: str


class CrossBorder(Struct, frozen=True):
    route: Route
    basis: str


class Decision(Struct, frozen=True):
    decision: Outcome
    list_version: str
    list_digest: str
    evaluated: Literal["listing", "order"]
    hits: list[Hit]
    four_eyes: bool
    cross_border: CrossBorder | None
