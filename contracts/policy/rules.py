"""Policy list files: loading, validation with precise messages, and compilation.

A list version is one TOML file under ``schemas/policy/``. Every problem is reported with the
file, the rule id and the field, all at once, so an author fixes a file in one pass.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from contracts.policy.conditions import Condition, ConditionError, compile_condition
from exchange.platform.canonical import sha256_digest
from exchange.platform.paths import SCHEMAS_DIR

POLICY_DIR = SCHEMAS_DIR / "policy"
_VERSION = re.compile(r"^\d{4}\.\d{1,3}$")
_RULE_ID = re.compile(r"^(NEG|CAU|LOC)-\d{2,3}$")
_EVIDENCE_CODE = re.compile(r"^[a-z][a-z0-9_]{1,63}$")
_TOP_KEYS = {"version", "title", "description", "definitions", "rules"}
_RULE_KEYS = {
    "id", "list", "scope", "title_zh", "title_en", "when", "explanation_zh", "explanation_en",
    "remedy_zh", "remedy_en", "basis", "four_eyes", "four_eyes_when", "evidence",
}  # fmt: skip
_REQUIRED_TEXT = ("title_zh", "title_en", "explanation_zh", "explanation_en", "remedy_zh",
                  "remedy_en", "basis")  # fmt: skip


@dataclass(frozen=True, slots=True)
class PolicyIssue:
    file: str
    rule: str | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"rule {self.rule}: " if self.rule else ""
        return f"{self.file}: {where}{self.field}: {self.message}"


class PolicyListError(ValueError):
    """A list file that cannot be used; ``issues`` holds every problem found."""

    def __init__(self, issues: list[PolicyIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(issue) for issue in issues))


@dataclass(frozen=True, slots=True)
class Evidence:
    code: str
    zh: str
    en: str
    when: Condition | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    list: Literal["negative", "cautious"]
    scope: Literal["product", "order"]
    title_zh: str
    title_en: str
    when: Condition
    explanation_zh: str
    explanation_en: str
    remedy_zh: str
    remedy_en: str
    basis: str
    four_eyes: bool
    four_eyes_when: Condition | None
    evidence: tuple[Evidence, ...]


@dataclass(frozen=True, slots=True)
class PolicyList:
    version: str
    title: str
    digest: str
    rules: tuple[Rule, ...]
    document: dict[str, Any] = field(repr=False)
    source: str = field(repr=False)

    @property
    def product_rules(self) -> tuple[Rule, ...]:
        return tuple(rule for rule in self.rules if rule.scope == "product")


class _Checker:
    def __init__(self, file: str) -> None:
        self.file = file
        self.issues: list[PolicyIssue] = []

    def add(self, rule: str | None, where: str, message: str) -> None:
        self.issues.append(PolicyIssue(self.file, rule, where, message))

    def text(self, raw: dict[str, Any], key: str, rule: str | None, *, required: bool) -> str:
        value = raw.get(key)
        if value is None:
            if required:
                self.add(rule, key, "missing" + (" explanation" if "explanation" in key else ""))
            return ""
        if not isinstance(value, str) or not value.strip():
            self.add(rule, key, "must be non-empty text")
            return ""
        return value.strip()


def parse_policy_list(source: str, file: str = "<input>") -> PolicyList:
    """Validate and compile a list from TOML text; raise `PolicyListError` with every issue."""
    check = _Checker(file)
    try:
        document = tomllib.loads(source)
    except tomllib.TOMLDecodeError as error:
        raise PolicyListError([PolicyIssue(file, None, "toml", str(error))]) from error
    for key in sorted(set(document) - _TOP_KEYS):
        check.add(None, key, "unknown key")
    version = document.get("version")
    if not isinstance(version, str) or not _VERSION.match(version):
        check.add(None, "version", f"must look like 2026.1, got {version!r}")
        version = ""
    title = check.text(document, "title", None, required=True)
    definitions = document.get("definitions", {})
    if not isinstance(definitions, dict):
        check.add(None, "definitions", "must be a table of named conditions")
        definitions = {}
    raw_rules = document.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        check.add(None, "rules", "needs at least one [[rules]] entry")
        raw_rules = []
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, raw in enumerate(raw_rules):
        rule = _rule(check, raw, index, definitions, seen)
        if rule is not None:
            rules.append(rule)
    if check.issues:
        raise PolicyListError(check.issues)
    return PolicyList(
        version=str(version),
        title=title,
        digest=sha256_digest(document),
        rules=tuple(rules),
        document=document,
        source=source,
    )


def _rule(
    check: _Checker, raw: Any, index: int, definitions: dict[str, Any], seen: set[str]
) -> Rule | None:
    if not isinstance(raw, dict):
        check.add(f"#{index + 1}", "rules", "each rule is a table")
        return None
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not _RULE_ID.match(rule_id):
        check.add(f"#{index + 1}", "id", f"must look like NEG-01 or CAU-01, got {rule_id!r}")
        rule_id = f"#{index + 1}"
    elif rule_id in seen:
        check.add(rule_id, "id", "duplicate id (identifiers are never reused)")
    seen.add(rule_id)
    for key in sorted(set(raw) - _RULE_KEYS):
        check.add(rule_id, key, "unknown key")
    list_name = raw.get("list")
    if list_name not in ("negative", "cautious"):
        check.add(rule_id, "list", f"must be 'negative' or 'cautious', got {list_name!r}")
    scope = raw.get("scope")
    if scope not in ("product", "order"):
        check.add(rule_id, "scope", f"must be 'product' or 'order', got {scope!r}")
        scope = "order"
    texts = {key: check.text(raw, key, rule_id, required=True) for key in _REQUIRED_TEXT}
    errors: list[ConditionError] = []

    def condition(node: Any, location: str) -> Condition:
        return compile_condition(
            node, location=location, definitions=definitions, scope=scope, errors=errors
        )

    if "when" not in raw:
        check.add(rule_id, "when", "missing condition")
        when = condition({"all": []}, "when")
        errors.clear()
    else:
        when = condition(raw["when"], "when")
    four_eyes = raw.get("four_eyes", False)
    if not isinstance(four_eyes, bool):
        check.add(rule_id, "four_eyes", f"must be true or false, got {four_eyes!r}")
        four_eyes = False
    four_eyes_when = (
        condition(raw["four_eyes_when"], "four_eyes_when") if "four_eyes_when" in raw else None
    )
    evidence = _evidence(check, rule_id, raw.get("evidence", []), condition)
    if list_name == "cautious" and not evidence:
        check.add(rule_id, "evidence", "a cautious rule says which evidence a review needs")
    for error in errors:
        check.add(rule_id, error.location, error.message)
    if list_name not in ("negative", "cautious"):
        return None
    return Rule(
        id=rule_id,
        list=list_name,
        scope="product" if scope == "product" else "order",
        when=when,
        four_eyes=four_eyes,
        four_eyes_when=four_eyes_when,
        evidence=tuple(evidence),
        **texts,
    )


def _evidence(check: _Checker, rule_id: str, items: Any, condition: Any) -> list[Evidence]:
    if not isinstance(items, list):
        check.add(rule_id, "evidence", "must be an array of [[rules.evidence]] tables")
        return []
    found: list[Evidence] = []
    for i, item in enumerate(items):
        where = f"evidence[{i}]"
        if not isinstance(item, dict):
            check.add(rule_id, where, "must be a table with code, zh, en")
            continue
        for key in sorted(set(item) - {"code", "zh", "en", "when"}):
            check.add(rule_id, f"{where}.{key}", "unknown key")
        code = item.get("code")
        if not isinstance(code, str) or not _EVIDENCE_CODE.match(code):
            check.add(rule_id, f"{where}.code", f"must be lower_snake text, got {code!r}")
            code = ""
        zh, en = item.get("zh"), item.get("en")
        for key, value in (("zh", zh), ("en", en)):
            if not isinstance(value, str) or not value.strip():
                check.add(rule_id, f"{where}.{key}", "missing explanation")
        when = condition(item["when"], f"{where}.when") if "when" in item else None
        found.append(Evidence(code=code, zh=str(zh or ""), en=str(en or ""), when=when))
    return found


def load_policy_list(path: Path) -> PolicyList:
    """Load one list file; the error names the file."""
    try:
        source = path.read_text(encoding="utf-8")
    except OSError as error:
        raise PolicyListError([PolicyIssue(str(path), None, "file", str(error))]) from error
    return parse_policy_list(source, path.name)


def bundled_versions() -> list[Path]:
    """The list files shipped under schemas/policy, oldest first."""

    def key(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in path.stem.split("."))

    return sorted(POLICY_DIR.glob("*.toml"), key=key)


def latest_bundled() -> PolicyList:
    return load_policy_list(bundled_versions()[-1])
