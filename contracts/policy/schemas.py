"""The decision: what the evaluator returns, the API answers, and decisions store."""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

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


# --- API shapes -----------------------------------------------------------------------------


class RuleSummary(Struct, frozen=True):
    id: str
    list: Literal["negative", "cautious"]
    scope: Literal["product", "order"]
    title_zh: str
    title_en: str
    basis: str
    four_eyes: bool


class PolicyListInfo(Struct, frozen=True):
    version: str
    digest: str
    title: str
    effective_from: datetime
    published_at: datetime
    published_by: str
    current: bool


class PolicyListDetail(Struct, frozen=True):
    info: PolicyListInfo
    rules: builtins.list[RuleSummary]
    source: str


class PolicyListPublish(Struct, forbid_unknown_fields=True):
    source: Annotated[str, Meta(min_length=1, max_length=1_000_000, description="the TOML file")]
    effective_from: datetime | None = None


class ReplayRequest(Struct, forbid_unknown_fields=True):
    """Either a published or bundled ``version``, or the ``source`` of a candidate list."""

    version: Annotated[str, Meta(max_length=64)] | None = None
    source: Annotated[str, Meta(max_length=1_000_000, description="the TOML file")] | None = None


class DecisionSnapshot(Struct, frozen=True):
    decision: Outcome
    list_version: str
    rules: builtins.list[str]


class DecisionChange(Struct, frozen=True):
    subject_type: str
    subject_id: str
    before: DecisionSnapshot
    after: DecisionSnapshot
    rules_added: builtins.list[str]
    rules_removed: builtins.list[str]


class ReplayReport(Struct, frozen=True):
    list_version: str
    list_digest: str
    subjects: int
    unchanged: int
    changed: builtins.list[DecisionChange]
